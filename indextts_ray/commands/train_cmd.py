"""`indextts-ray train`: run one stage with Ray Train (local Ray, or the cluster in RAY_ADDRESS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.config import CONFIGS_DIR, load_config

HELP = ("Train one IndexTTS2 stage on Ray Train. Rerunning the same command resumes from the last checkpoint "
        "(same run.output_dir + run.name); a finished run does nothing. Exports the final weights to "
        "<output_dir>/<name>/final (official gpt.pth layout).")
EXAMPLES = [
    "indextts-ray train --stage 1 train.data_dir=data/prepared train.init_checkpoint=checkpoints/gpt.pth",
    "indextts-ray train --config configs/stage2.yaml train.scaling.num_workers=8 train.grl_lambda=2.0",
    "indextts-ray train --config configs/demo/stage1.yaml train.max_steps=20",
    "indextts-ray train --config configs/demo/stage1.yaml --restart train.batch.max_tokens=3000",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--stage", type=int, choices=[1, 2, 3], help="use configs/stage<N>.yaml")
    g.add_argument("--config", type=Path, help="a stage config YAML")
    p.add_argument("--restart", action="store_true",
                   help="delete the run folder (<run.output_dir>/<run.name>) first and train from step 0: needed "
                        "when a changed setting (data, batching, prompts, model) cannot resume the saved run")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.train.export import export_run
    from indextts_ray.train.trainer import absolutize, run_training

    path = args.config or CONFIGS_DIR / f"stage{args.stage}.yaml"
    cfg = absolutize(load_config(path, args.overrides))
    run_training(cfg, restart=args.restart)
    out = export_run(Path(cfg.run.output_dir) / cfg.run.name, Path(cfg.run.output_dir) / cfg.run.name / "final")
    print(f"exported: {out}")
    return 0
