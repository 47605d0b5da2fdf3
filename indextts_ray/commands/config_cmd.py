"""`indextts-ray config`: print the fully resolved config and its hash, or only check it."""

from __future__ import annotations

import argparse

from indextts_ray.config import config_hash, dump_config, load_config

HELP = "Resolve a config (defaults: composition, then the file, then key=value overrides), validate it, print it."
EXAMPLES = [
    "indextts-ray config configs/stage1.yaml",
    "indextts-ray config configs/stage2.yaml train.lr=1e-4 --check",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--check", action="store_true", help="only validate; print the hash")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.path, args.overrides)
    if not args.check:
        print(dump_config(cfg), end="")
    print(f"# config_hash: {config_hash(cfg)}")
    return 0
