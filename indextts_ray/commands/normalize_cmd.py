"""`indextts-ray normalize`: show what the text normaliser makes of a transcript."""

from __future__ import annotations

import argparse
import sys

from indextts_ray.text import detect_language, normalize

HELP = ("Normalise text to its spoken form as `prepare` does before tokenisation (Korean and English rules; "
        "other languages get Unicode/whitespace cleanup only).")
EXAMPLES = [
    'indextts-ray normalize "사과 3개를 2026년 11월 28일 10:30에 샀다" --language ko',
    'indextts-ray normalize "It costs $3.50 at 10:30." --language en',
    "indextts-ray normalize - --language ko < transcripts.txt",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help='the text to normalise; "-" reads one text per line from stdin')
    p.add_argument("--language", default=None,
                   help="language code (ko, en, zh, ...); default: detected from the script per line")
    p.add_argument("--show-language", action="store_true", help="prefix each line with the language used")


def _one(text: str, language: str | None, show: bool) -> str:
    lang = language or detect_language(text)
    out = normalize(text, lang)
    return f"{lang}\t{out}" if show else out


def run(args: argparse.Namespace) -> int:
    if args.text == "-":
        for line in sys.stdin:
            print(_one(line.rstrip("\n"), args.language, args.show_language))
    else:
        print(_one(args.text, args.language, args.show_language))
    return 0
