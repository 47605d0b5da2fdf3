"""`indextts-ray eval`: evaluate exported checkpoints on the held-out shards and write the report."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Evaluate one or more exported checkpoints (e.g. runs/stage{1,2,3}/final) on the prepared val shards: "
        "val mel/text loss and top-1, linear probes (emotion and speaker from the emotion vector, speaker from the "
        "speaker latents) with chance levels, per-emotion accuracy and confusion matrix, PCA cluster plots, and a "
        "sampling sanity check (KV-cache generation: stop rate, length ratio). Writes report.md, report.html, "
        "report.json and PNGs into --out, atomically; training curves come from each export's run directory.")
EXAMPLES = [
    "indextts-ray eval --export runs/stage1/final --export runs/stage2/final --export runs/stage3/final "
    "--data data/prepared --out runs/report",
    "indextts-ray eval --export demo_out/export --data demo_out/prepared --out /tmp/report --max-items 100",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", dest="exports", type=Path, action="append", required=True, metavar="DIR",
                   help="export directory (with model_config.yaml); repeat for a side-by-side stage comparison, in order")
    p.add_argument("--data", type=Path, required=True, metavar="PREPARED_DIR", help="prepared data directory (its val/ shards are held out)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report directory (replaced as a whole)")
    p.add_argument("--max-items", type=int, default=400, help="held-out rows sampled (seeded) for every export")
    p.add_argument("--prompts", type=int, default=8, help="rows used for the sampling sanity check")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of the loss and embedding passes")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample, probe splits and sampling")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.errors import UserError
    from indextts_ray.eval.evaluate import EvalOptions, evaluate_and_report, stage_names

    if args.max_items < 2 or args.prompts < 0 or args.batch_size < 1:
        raise UserError("--max-items must be >= 2, --prompts >= 0 and --batch-size >= 1")
    exports = dict(zip(stage_names(args.exports), args.exports))
    options = EvalOptions(max_items=args.max_items, seed=args.seed, batch_size=args.batch_size,
                          n_prompts=args.prompts, device=args.device)
    summary = evaluate_and_report(exports, args.data, args.out, options)
    for check in summary["checks"]:
        print(("ok   " if check["ok"] else "FAIL ") + check["text"])
    print(f"report: {Path(args.out) / 'report.md'} (and report.html)")
    return 0
