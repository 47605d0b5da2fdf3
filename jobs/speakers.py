"""Ray Job entrypoint for the 'speakers' step: `ray job submit --working-dir . -- python jobs/speakers.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("speakers")
