"""Ray Job entrypoint for the 'export' step: `ray job submit --working-dir . -- python jobs/export.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("export")
