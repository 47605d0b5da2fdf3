"""Ray Job entrypoint for the 'stage3' step: `ray job submit --working-dir . -- python jobs/stage3.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("stage3")
