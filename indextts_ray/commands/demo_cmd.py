"""`indextts-ray demo`: the whole recipe on a synthetic corpus with the tiny model, on local Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.config import CONFIGS_DIR, load_config

HELP = ("End-to-end demo, no cluster and no downloads: synthesise a multi-speaker, multi-emotion corpus, prepare "
        "shards, map speakers, train Stages 1-3 of a tiny UnifiedVoice v2 on 2 local Ray workers and export it. "
        "Rerunning resumes (finished steps are skipped).")
EXAMPLES = ["indextts-ray demo --out demo_out", "indextts-ray demo --out /tmp/demo pipeline.synth.speakers=8"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="work directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of configs/pipeline/demo.yaml")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.pipeline.runner import pipeline_status, run_pipeline

    path = CONFIGS_DIR / "pipeline" / "demo.yaml"
    out = args.out.absolute()
    stage_paths = [f"pipeline.stage{n}.config={CONFIGS_DIR / 'demo' / f'stage{n}.yaml'}" for n in (1, 2, 3)]
    cfg = load_config(path, [f"pipeline.work_dir={out}", *stage_paths, *args.overrides])
    run_pipeline(cfg)
    print("\nsteps:")
    for name, state, detail in pipeline_status(cfg):
        print(f"  {name:<10} {state:<8} {detail}")
    print(f"\nexported GPT (official layout): {out / 'export' / 'gpt.pth'}")
    print(f"TensorBoard: tensorboard --logdir {out / 'runs'}")
    return 0
