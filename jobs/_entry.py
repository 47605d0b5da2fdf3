"""Shared body of the Ray Job entrypoints: `python jobs/<step>.py --config PIPELINE.yaml [key=value ...]`.

The job runs the pipeline step in its own driver process and writes the step's receipt on success.
"""

import argparse
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs from an unpacked copy of the repo: import the package from there
# when it is not installed in the cluster's environment.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(step: str) -> None:
    from indextts_ray.config import load_config
    from indextts_ray.errors import UserError
    from indextts_ray.logging_utils import setup_logging
    from indextts_ray.pipeline.runner import run_one

    p = argparse.ArgumentParser(prog=f"jobs/{step}.py", description=f"Ray Job entrypoint for the {step!r} step")
    p.add_argument("--config", required=True, help="pipeline config YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_args()
    setup_logging()
    try:
        receipt = run_one(load_config(args.config, args.overrides), step)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[{step}] done in {receipt['seconds']:.1f}s: {receipt['metrics']}")
