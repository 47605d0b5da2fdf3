"""`indextts-ray` command line: an explicit table of subcommands, each a thin wrapper over one library call.

Exit codes: 0 ok, 2 usage or config/data error (one line, no traceback), 1 runtime failure.
`--debug` adds the traceback (same exit code). The global flags (`--debug`, `-v`, `-q`) go anywhere on the line,
and `key=value` overrides may come before or after options. Subcommand modules are imported only when used, so
`--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from indextts_ray import __version__
from indextts_ray.errors import UserError
from indextts_ray.logging_utils import setup_logging

# name -> (module with HELP, EXAMPLES, add_arguments(parser), run(args) -> int, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("indextts_ray.commands.config_cmd", "show or check a resolved config (composition + overrides)"),
    "prepare": ("indextts_ray.commands.prepare_cmd", "manifest -> validated, paired, featurised Parquet shards (Ray Data)"),
    "tokenizer": ("indextts_ray.commands.tokenizer_cmd", "train a BPE tokenizer, or extend one with a new language"),
    "synth": ("indextts_ray.commands.synth_cmd", "write the deterministic synthetic speech corpus (demo, tests)"),
    "speakers": ("indextts_ray.commands.speakers_cmd", "select top-k speakers, write speaker_mapping.json (Stage 2)"),
    "segment": ("indextts_ray.commands.segment_cmd", "cut long recordings at silences into 3-15 s segments + manifests"),
    "demo": ("indextts_ray.commands.demo_cmd", "the whole recipe on a synthetic corpus, tiny model, local Ray"),
    "pipeline": ("indextts_ray.commands.pipeline_cmd", "run/submit/status of the step DAG (prepare ... export)"),
    "train": ("indextts_ray.commands.train_cmd", "run one training stage on Ray Train (resumes when rerun)"),
    "tune": ("indextts_ray.commands.tune_cmd", "Stage-2 band-control search with Ray Tune (resumes when rerun)"),
    "export": ("indextts_ray.commands.export_cmd", "checkpoint -> official gpt.pth + config.yaml (+ heads sidecars)"),
    "eval": ("indextts_ray.commands.eval_cmd", "evaluate exports on held-out shards: losses, probes, plots, report"),
    "normalize": ("indextts_ray.commands.normalize_cmd", "print the spoken form of a transcript (text normaliser)"),
}

log = logging.getLogger("indextts_ray")

# global flags, accepted before or after the subcommand (taken out of argv before the subcommand parses it)
GLOBAL_FLAGS = {"--debug": "debug", "-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `error: indextts-ray train: ... (see ... --help)`, exit 2."""

    def error(self, message: str):
        sys.stderr.write(f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def split_global_flags(argv: list[str]) -> tuple[dict[str, bool], list[str]]:
    """({debug, verbose, quiet}, the rest of argv); everything after a `--` is left as it is."""
    flags = dict.fromkeys(("debug", "verbose", "quiet"), False)
    rest: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            rest += argv[i:]
            break
        if a in GLOBAL_FLAGS:
            flags[GLOBAL_FLAGS[a]] = True
        else:
            rest.append(a)
    return flags, rest


def _top_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="indextts-ray",
        description="Train IndexTTS2 (UnifiedVoice v2) on Ray: data preparation, three training stages, export, eval.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands:\n" + "\n".join(f"  {n:<12} {s}" for n, (_, s) in COMMANDS.items())
        + "\n\nRun `indextts-ray <subcommand> --help` for its options and examples.",
    )
    p.add_argument("--version", action="version", version=f"indextts-ray {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="subcommand", help="see below")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def build_subparser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(COMMANDS[name][0])
    sub = Parser(
        prog=f"indextts-ray {name}",
        description=module.HELP,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in module.EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(sub)
    return sub, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags, argv = split_global_flags(argv)
    top = _top_parser()
    ns = top.parse_args(argv)
    if flags["verbose"] and flags["quiet"]:
        top.error("-v/--verbose and -q/--quiet exclude each other")
    if ns.command is None:
        top.print_help()
        return 2
    setup_logging(verbose=flags["verbose"], quiet=flags["quiet"])
    sub, module = build_subparser(ns.command)
    # overrides anywhere (`--until stage1 k=v`); parsers with their own subcommands cannot intermix
    nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
    args = sub.parse_args(ns.args) if nested else sub.parse_intermixed_args(ns.args)
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        if flags["debug"]:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C; a search says where its partial results are
        print("interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except Exception as e:  # runtime failure: one line unless --debug
        if flags["debug"]:
            traceback.print_exc()
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        else:
            print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
