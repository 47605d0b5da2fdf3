"""Ray Job entrypoint for the 'tokenizer' step: `ray job submit --working-dir . -- python jobs/tokenizer.py --config FILE`."""

from _entry import main

if __name__ == "__main__":
    main("tokenizer")
