"""`indextts-ray eval`: evaluate exported checkpoints on the held-out shards and write the report."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Evaluate one or more exported checkpoints (e.g. runs/stage{1,2,3}/final) on the prepared val shards: "
        "val mel/text loss and top-1, linear probes (emotion and speaker from the emotion vector, speaker from the "
        "speaker latents) with chance levels, per-emotion accuracy and confusion matrix, PCA cluster plots, and a "
        "sampling sanity check (KV-cache generation: stop rate, length ratio). Writes report.md, report.html, "
        "report.json and PNGs into --out, atomically; training curves come from each export's run directory. "
        "--emotion-control adds emotion-controlled generation: N speakers x M held-out texts x 7 emotions, each "
        "emotion asked for by its label (the trained emotion-label table) and by a reference clip of another "
        "speaker (zero-shot transfer); the generated codes are judged by small code-space emotion and speaker "
        "classifiers trained on real codes (their own accuracy reported; the >= 85 % per-emotion target is judged "
        "only when the emotion classifier reaches >= 90 % on real codes), with confusion matrices per export.")
EXAMPLES = [
    "indextts-ray eval --export runs/stage1/final --export runs/stage2/final --export runs/stage3/final "
    "--data data/prepared --out runs/report",
    "indextts-ray eval --export demo_out/export --data demo_out/prepared --out /tmp/report --max-items 100",
    "indextts-ray eval --export runs/stage1/final --export runs/stage2/final --data data/prepared --out runs/report "
    "--emotion-control --emotion-speakers 8 --emotion-texts 6",
    "indextts-ray eval --export demo_out/runs/stage2/final --data demo_out/prepared --out /tmp/emo --emotion-control "
    "--emotion-speakers 2 --emotion-texts 2 --emotion-splits train,val --emotion-alpha 0.8",
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
    p.add_argument("--probe-splits", default="", metavar="SPLITS",
                   help="probe every stored utterance of these splits (val or train,val) instead of the held-out rows' "
                        "prompts: larger probe test sets, so that the goal checks can be judged")
    g = p.add_argument_group("emotion control (--emotion-control)")
    g.add_argument("--emotion-control", action="store_true",
                   help="also generate codes per emotion label / another speaker's reference clip and judge them")
    g.add_argument("--emotion-speakers", type=int, default=4, metavar="N", help="speakers in the design")
    g.add_argument("--emotion-texts", type=int, default=4, metavar="M", help="held-out texts per speaker and emotion")
    g.add_argument("--emotion-alpha", type=float, default=1.0,
                   help="blend of the requested emotion vector with the speaker prompt's own (1 = requested only)")
    g.add_argument("--emotion-max-codes", type=int, default=300, help="most codes generated per item")
    g.add_argument("--emotion-splits", default="val", metavar="SPLITS",
                   help="prepared splits whose real codes train the judges and give the clips: val or train,val "
                        "(a small val set cannot train a 7-class judge)")
    g.add_argument("--emotion-sampling", choices=["greedy", "top_p"], default="greedy",
                   help="decoding (top_p: temperature 0.8, top-k 30, top-p 0.8, seeded by --seed)")
    g.add_argument("--emotion-judge-code-vectors", action="store_true",
                   help="start the judges' code embeddings from the builtin codebook's code vectors (data prepared "
                        "with builtin features), with one hidden layer")
    g.add_argument("--no-emotion-reference", dest="emotion_reference", action="store_false",
                   help="skip the zero-shot transfer from another speaker's reference clip")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.errors import UserError
    from indextts_ray.eval.emotion_control import EmotionControlOptions
    from indextts_ray.eval.evaluate import EvalOptions, evaluate_and_report, stage_names

    if args.max_items < 2 or args.prompts < 0 or args.batch_size < 1:
        raise UserError("--max-items must be >= 2, --prompts >= 0 and --batch-size >= 1")
    probe_splits = tuple(s.strip() for s in args.probe_splits.split(",") if s.strip())
    if not set(probe_splits) <= {"train", "val"}:
        raise UserError(f"--probe-splits: a subset of train,val; got {args.probe_splits!r}")
    exports = dict(zip(stage_names(args.exports), args.exports))
    control = None
    if args.emotion_control:
        try:
            control = EmotionControlOptions(
                speakers=args.emotion_speakers, texts=args.emotion_texts, alpha=args.emotion_alpha,
                max_codes=args.emotion_max_codes, splits=tuple(s.strip() for s in args.emotion_splits.split(",")),
                reference=args.emotion_reference, sampling=args.emotion_sampling,
                judge_code_vectors=args.emotion_judge_code_vectors)
        except ValueError as e:
            raise UserError(f"--emotion-*: {e}") from None
    options = EvalOptions(max_items=args.max_items, seed=args.seed, batch_size=args.batch_size,
                          n_prompts=args.prompts, device=args.device, emotion_control=control,
                          probe_splits=probe_splits)
    summary = evaluate_and_report(exports, args.data, args.out, options)
    for check in summary["checks"]:
        print({True: "ok   ", False: "FAIL ", None: "n/a  "}[check["ok"]] + check["text"])
    print(f"report: {Path(args.out) / 'report.md'} (and report.html)")
    return 0
