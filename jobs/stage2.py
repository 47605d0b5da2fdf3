"""Ray Job entrypoint for the 'stage2' step: `ray job submit --working-dir . -- python jobs/stage2.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("stage2")
