"""Ray Job entrypoint for the 'synth' step: `ray job submit --working-dir . -- python jobs/synth.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("synth")
