"""Shared body of the Ray Job entrypoints: `python jobs/<step>.py --config PIPELINE.yaml [--force] [key=value ...]`.

The job runs the pipeline step in its own driver process and writes the step's receipt on success. It runs from
its runtime_env's working_dir (the bundle `pipeline submit` uploads, or `ray job submit --working-dir .`), with
the `python` of the environment Ray was started from (it needs this project's dependencies).
"""

import argparse
import json
import os
import sys
from pathlib import Path

# import the package from the job's working_dir (the submitted code), not from an install elsewhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _job_id() -> str | None:
    """This job's submission id (the job supervisor passes it in the job config)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return json.loads(raw).get("metadata", {}).get("job_submission_id") if raw else None


def main(step: str) -> None:
    try:
        import ray  # noqa: F401
        import torch  # noqa: F401

        from indextts_ray.config import load_config
    except ImportError as e:
        sys.exit(f"error: {sys.executable} lacks this project's dependencies ({e}): start Ray from the project's "
                 "environment (activate its .venv before `ray start`; cluster.yaml does)")
    from indextts_ray.errors import UserError
    from indextts_ray.logging_utils import setup_logging
    from indextts_ray.pipeline.runner import run_one

    p = argparse.ArgumentParser(prog=f"jobs/{step}.py", description=f"Ray Job entrypoint for the {step!r} step")
    p.add_argument("--config", required=True, help="pipeline config YAML")
    p.add_argument("--force", action="store_true", help="start the step over even if its run matches")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_intermixed_args()
    setup_logging()
    try:
        receipt = run_one(load_config(args.config, args.overrides), step, fresh=args.force, job_id=_job_id())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[{step}] done in {receipt['seconds']:.1f}s: {receipt['metrics']}")
