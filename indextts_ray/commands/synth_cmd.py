"""`indextts-ray synth`: write the deterministic synthetic speech corpus used by the demo and the tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from indextts_ray.data.synth import EMOTIONS, WORDS, make_corpus
from indextts_ray.errors import UserError

HELP = ("Make a deterministic multi-speaker, multi-emotion, multi-language speech-like corpus (pure numpy): "
        "manifest.jsonl + wavs/, plus long recordings with known pauses (long/ + long_recordings.json).")
EXAMPLES = [
    "indextts-ray synth --out data/synth",
    "indextts-ray synth --out data/synth --speakers 8 --utts 20 --languages ko --seed 3",
]


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--speakers", type=int, default=4, help="number of speakers (default 4)")
    p.add_argument("--utts", type=int, default=8, help="utterances per speaker (default 8)")
    p.add_argument("--languages", type=_csv, default=("ko", "en"), help=f"comma list from {sorted(WORDS)}")
    p.add_argument("--emotions", type=_csv, default=EMOTIONS, help=f"comma list from {','.join(EMOTIONS)}")
    p.add_argument("--long", type=int, default=2, help="long recordings with known pauses (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=24000)


def run(args: argparse.Namespace) -> int:
    try:
        manifest = make_corpus(args.out, n_speakers=args.speakers, utts_per_speaker=args.utts,
                               languages=args.languages, emotions=args.emotions, seed=args.seed,
                               sample_rate=args.sample_rate, n_long_recordings=args.long)
    except ValueError as e:  # bad counts/labels: a usage problem, not a crash
        raise UserError(f"synth: {e}") from None
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    hours = sum(r["duration"] for r in rows) / 3600
    print(f"wrote {manifest} ({len(rows)} utterances, {hours * 60:.1f} min, {args.speakers} speakers, "
          f"{len(args.emotions)} emotions, languages {','.join(args.languages)})")
    if args.long:
        print(f"wrote {args.long} long recordings + {args.out / 'long_recordings.json'}")
    return 0
