"""`indextts-ray tokenizer train|extend`: SentencePiece BPE on a manifest's (normalised) text."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.errors import DataError

HELP = ("Train a SentencePiece BPE tokenizer on a manifest's text (`train`), or add pieces for a new language to "
        "an existing bpe.model keeping every existing piece and id (`extend`), printing per language the share "
        "of characters the model maps to <unk> before and after. Text is normalised to spoken form first "
        "(indextts_ray.text), as `prepare` does. Ids: <s> = 0, </s> = 1 (the GPT's start/stop text tokens).")
EXAMPLES = [
    "indextts-ray tokenizer train runs/demo/corpus/manifest.jsonl --vocab-size 256 --out runs/demo/bpe.model",
    "indextts-ray tokenizer extend checkpoints/bpe.model data/ko/manifest.jsonl --language ko --pieces 2000 "
    "--out checkpoints/bpe_ko.model",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,extend}")
    t = sub.add_parser("train", help="train a new BPE model on the manifest's text")
    t.add_argument("manifest", type=Path)
    t.add_argument("--vocab-size", type=int, required=True, help="pieces incl. <s>, </s>, <unk> (official: 12000)")
    t.add_argument("--out", type=Path, required=True, help="output .model file")
    t.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters kept as pieces; rarer ones become <unk> (default 0.9995)")
    e = sub.add_parser("extend", help="append pieces for a new language to an existing BPE model")
    e.add_argument("base", type=Path, help="existing bpe.model (e.g. the official IndexTTS2 one)")
    e.add_argument("manifest", type=Path)
    e.add_argument("--pieces", type=int, required=True, help="at most this many new pieces")
    e.add_argument("--out", type=Path, required=True, help="output .model file (the base is not modified)")
    e.add_argument("--language", help="learn pieces only from rows of this language (default: all rows)")
    e.add_argument("--character-coverage", type=float, default=1.0)
    for q in (t, e):
        q.add_argument("--format", default="auto", choices=["auto", "jsonl", "melotts", "indextts_precomputed"])
        q.add_argument("--no-normalize", action="store_true", help="use the manifest text as is")


def run(args: argparse.Namespace) -> int:
    from indextts_ray.data.tokenizer import extend_tokenizer, load_tokenizer, manifest_texts, train_tokenizer
    from indextts_ray.text import TextConfig

    by_lang, skipped = manifest_texts(args.manifest, args.format, TextConfig(enabled=not args.no_normalize))
    if skipped:
        print(f"skipped {skipped} rows without a usable text or language field")
    if args.action == "train":
        if args.out.suffix != ".model":
            raise DataError(f"--out {args.out}: use a .model file name")
        texts = [t for ts in by_lang.values() for t in ts]
        path = train_tokenizer(texts, args.out.with_suffix(""), args.vocab_size, args.character_coverage)
        print(f"wrote {path}: {load_tokenizer(path).vocab_size} pieces from {len(texts)} texts")
        return 0
    if args.language and args.language not in by_lang:
        raise DataError(f"{args.manifest}: no rows of language {args.language!r} (found {', '.join(sorted(by_lang))})")
    texts = by_lang[args.language] if args.language else [t for ts in by_lang.values() for t in ts]
    report = extend_tokenizer(args.base, texts, args.out, args.pieces, coverage_texts=by_lang,
                              character_coverage=args.character_coverage)
    print(f"{args.base}: {report.base_vocab} pieces + {report.added} new = {report.new_vocab} -> {args.out} "
          f"({report.skipped_known} candidate pieces skipped: made only of characters the base knows)")
    print(f"{'language':<10}{'chars':>10}{'unknown before':>16}{'unknown after':>15}  still unknown")
    for lang in sorted(by_lang):
        b, a = report.coverage_before[lang], report.coverage_after[lang]
        print(f"{lang:<10}{b['chars']:>10}{1 - b['coverage']:>16.2%}{1 - a['coverage']:>15.2%}  {a['top_unknown']}")
    return 0
