"""`indextts-ray speakers`: select the Stage-2 classifier's speakers and write `speaker_mapping.json`."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.data.speakers import build_speaker_mapping, save_speaker_mapping

HELP = ("Count samples per speaker (pyarrow group-by over prepared shards, or streaming over a JSONL/MeloTTS "
        "manifest), keep the top-k speakers with >= min-samples and write speaker_mapping.json "
        "(speaker -> class id, by count then name) with their counts.")
EXAMPLES = [
    "indextts-ray speakers --input prepared/train --out prepared/speaker_mapping.json",
    "indextts-ray speakers --top-k 500 --min-samples 50 --input data/manifest.jsonl --out speaker_mapping.json",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, type=Path, help="prepared shard folder, a .parquet file, or a manifest")
    p.add_argument("--out", type=Path, default=Path("speaker_mapping.json"), help="default ./speaker_mapping.json")
    p.add_argument("--top-k", type=int, default=500, help="at most this many speakers (default 500)")
    p.add_argument("--min-samples", type=int, default=50, help="samples a speaker needs (default 50)")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "melotts", "indextts_precomputed"],
                   help="manifest format (manifests only)")


def run(args: argparse.Namespace) -> int:
    sm = build_speaker_mapping(args.input, top_k=args.top_k, min_samples=args.min_samples, fmt=args.format)
    print(sm.report())
    print(f"wrote {save_speaker_mapping(sm, args.out)}")
    return 0
