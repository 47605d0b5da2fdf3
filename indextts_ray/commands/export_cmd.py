"""`indextts-ray export`: a training checkpoint -> gpt.pth (official keys only) + config.yaml + sidecars."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Export a run's latest checkpoint (or a given step-* checkpoint) to a directory the official IndexTTS2 "
        "inference code loads: gpt.pth with exactly the official keys, gpt.safetensors, config.yaml (gpt: section), "
        "training_heads.safetensors and emotion_table.safetensors.")
EXAMPLES = [
    "indextts-ray export runs/stage3 --out export/",
    "indextts-ray export runs/stage1/step-00004000 --out export/stage1-4000",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="run directory or step-* checkpoint directory")
    p.add_argument("--out", type=Path, required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.train.export import export_run

    print(f"exported: {export_run(args.source, args.out)}")
    return 0
