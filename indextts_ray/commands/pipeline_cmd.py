"""`indextts-ray pipeline run|submit|status`: the whole recipe as a resumable DAG of steps."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.config import load_config

HELP = ("Run the recipe synth? -> tokenizer? -> prepare -> speakers -> stage1 -> stage2 -> stage3 -> export as a DAG. Each finished "
        "step writes a receipt; a rerun skips steps whose receipt matches and reruns those whose config or inputs "
        "changed (and their dependents); a stage whose config, init checkpoint or data changed trains from step 0. "
        "`run` executes here on local Ray (or RAY_ADDRESS); `submit` submits each step as a Ray Job when its "
        "dependencies succeeded (code and resolved configs travel in the job's runtime_env; pipeline.work_dir must "
        "be on storage the cluster shares); `status` shows the graph, with running steps' job id and progress.")
EXAMPLES = [
    "indextts-ray pipeline run --config configs/pipeline/demo.yaml",
    "indextts-ray pipeline run --config configs/pipeline/demo.yaml --until stage1 pipeline.work_dir=/tmp/demo",
    "indextts-ray pipeline submit --config my_pipeline.yaml --address http://127.0.0.1:8265 --force stage3",
    "indextts-ray pipeline status --config my_pipeline.yaml",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["run", "submit", "status"])
    p.add_argument("--config", type=Path, required=True, help="pipeline config YAML (configs/pipeline/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--until", help="stop after this step")
    p.add_argument("--force", action="append", default=[], metavar="STEP",
                   help="rerun this step from scratch even if its receipt matches (repeatable)")
    p.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard/job server (submit)")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.pipeline.runner import pipeline_status, run_pipeline, submit_pipeline

    cfg = load_config(args.config, args.overrides)
    if args.action == "status":
        for name, state, detail in pipeline_status(cfg):
            print(f"{name:<10} {state:<8} {detail}")
        return 0
    if args.action == "run":
        run_pipeline(cfg, until=args.until, force=tuple(args.force))
    else:
        submit_pipeline(cfg, args.config, args.overrides, args.address, until=args.until, force=tuple(args.force))
    return 0
