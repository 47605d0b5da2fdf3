"""Ray Job entrypoint for the 'stage1' step: `ray job submit --working-dir . -- python jobs/stage1.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("stage1")
