"""`indextts-ray tune`: the Stage-2 band-control search with Ray Tune (local Ray, or the cluster in RAY_ADDRESS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.config import load_config

HELP = ("Search Stage-2 settings (GRL λ, speaker-loss weight, lr, band-controller gains: `tune.space`) with Ray "
        "Tune: each trial is a short Stage-2 run, scored by the fraction of evaluation windows whose speaker "
        "accuracy is inside train.band [low, high], minus the mel-loss increase. ASHA stops hopeless trials "
        "(tune.scheduler=pbt|pb2 perturbs the values between checkpoints instead). Writes results.csv, band.png, "
        "best.yaml and final/ (the best trial's export: the Stage-2 result) into <run.output_dir>/<run.name>. "
        "Rerunning the same command resumes the search.")
EXAMPLES = [
    "indextts-ray tune --config configs/tune/demo.yaml train.data_dir=demo_out/prepared",
    "indextts-ray tune --config configs/tune/stage2.yaml train.data_dir=data/prepared tune.num_samples=16",
    "indextts-ray tune --config configs/tune/stage2.yaml train.data_dir=data/prepared tune.scheduler=pbt "
    "tune.max_concurrent_trials=4",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="a config with a `tune:` section (configs/tune/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.tune.report import format_table
    from indextts_ray.tune.search import run_tune

    cfg = load_config(args.config, args.overrides)
    out = run_tune(cfg)
    columns = ["trial", "status", "steps", cfg.tune.metric, "in_band", "mel_increase", "steps_to_band",
               "grl_lambda", "speaker_weight"]
    print(("resumed" if out.restored else "search") + f": {out.exp_dir}")
    print(format_table(out.rows, list(dict.fromkeys(columns))))
    print(f"best trial: {out.best_trial}\nStage-2 result (export): {out.export}\nbest config: {out.best_config}")
    print(f"table: {out.table}\nplot: {out.plot}")
    return 0
