"""Ray Job entrypoint for the 'prepare' step: `ray job submit --working-dir . -- python jobs/prepare.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("prepare")
