"""`indextts-ray export`: a training checkpoint -> gpt.pth (official keys only) + config.yaml + sidecars."""

from __future__ import annotations

import argparse

HELP = ("Export a run's latest checkpoint (or a given step-* checkpoint) to a directory the official IndexTTS2 "
        "inference code loads: gpt.pth with exactly the official keys, gpt.safetensors, config.yaml (gpt: section), "
        "training_heads.safetensors and emotion_table.safetensors.")
EXAMPLES = [
    "indextts-ray export runs/stage3 --out export/",
    "indextts-ray export runs/stage1/step-00004000 --out export/stage1-4000",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    # str, not Path: either may be an object-store URI (s3://...), whose `//` a Path would collapse
    p.add_argument("source", help="run directory or step-* checkpoint directory (a path or s3://, gs:// URI)")
    p.add_argument("--out", required=True, help="output directory (a path or s3://, gs:// URI)")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.train.export import export_run

    print(f"exported: {export_run(args.source, args.out)}")
    return 0
