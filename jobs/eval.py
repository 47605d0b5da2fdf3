"""Ray Job entrypoint for the 'eval' step: `ray job submit --working-dir . -- python jobs/eval.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("eval")
