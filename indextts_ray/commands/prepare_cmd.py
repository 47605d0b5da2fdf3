"""`indextts-ray prepare`: manifest -> validated, paired, featurised Parquet shards (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.config import CONFIGS_DIR, Config, load_config, presets, schema_for
from indextts_ray.data.config import DataConfig
from indextts_ray.errors import UserError
from indextts_ray.model.config import ModelConfig

HELP = ("Validate a speech manifest (JSONL, MeloTTS list or IndexTTS2 precomputed), pair prompts, extract features "
        "and write Parquet shards with Ray Data: <out>/{train,val}/shard-NNNNN.parquet, rejected.parquet, "
        "stats.json, dataset.json. Prints rows in = written + rejected. A rerun skips finished shards.\n\n"
        "--config is a whole config (with `data:` and `model:` sections) or a data-section file such as "
        "configs/data/demo.yaml, whose model comes from --model. A data-section file works from any folder: "
        "its keys tell (or a `section: data` line at its top); --data FILE|NAME says so explicitly. "
        "Overrides are data.KEY=VALUE / model.KEY=VALUE.")
EXAMPLES = [
    "indextts-ray prepare --config configs/data/demo.yaml --model tiny",
    "indextts-ray prepare --config configs/data/demo.yaml --model tiny data.output_dir=runs/demo/data2 data.workers=1",
    "indextts-ray prepare --config my_run.yaml data.manifest=/data/ko/manifest.jsonl data.output_dir=/data/ko/prepared",
    "indextts-ray prepare --config configs/data/demo.yaml --model tiny --restart",
    "indextts-ray prepare --data my_data.yaml --model tiny     # a copy of configs/data/demo.yaml, anywhere",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="whole config YAML, or a data-section YAML (configs/data/*.yaml or any "
                                        "file of data keys)")
    which.add_argument("--data", help="a data-section YAML anywhere, or a preset name (configs/data/NAME.yaml)")
    p.add_argument("overrides", nargs="*", help="data.KEY=VALUE or model.KEY=VALUE overrides")
    p.add_argument("--model", help="with a data-section config: model preset name (configs/model/NAME.yaml) or "
                                   "a model YAML file; default: the official IndexTTS2 sizes")
    p.add_argument("--restart", action="store_true",
                   help="delete this step's outputs in data.output_dir first (needed after a config change)")


def load_prepare_config(path: str, overrides: list[str], model: str | None, data_section: bool = False) -> Config:
    """A whole `Config` from either a whole config file or a data-section file plus a model.

    Args:
        data_section: `path` is a data-section file (`--data`) wherever it is, whatever its keys.
    """
    schema = DataConfig if data_section else schema_for(path)
    if schema is Config:
        if model:
            raise UserError(f"{path} is a whole config: set its model with `defaults: [model: NAME]`, not --model")
        return load_config(path, overrides)
    if schema is not DataConfig:
        raise UserError(f"{path} is a {schema.__name__} file; give a whole config or a configs/data/*.yaml file")
    by_section: dict[str, list[str]] = {"data": [], "model": []}
    for item in overrides:
        section, _, rest = item.partition(".")
        if section not in by_section or not rest:
            raise UserError(f"override {item!r}: with a data-section config use data.KEY=VALUE or model.KEY=VALUE")
        by_section[section].append(rest)
    data = load_config(path, by_section["data"], schema=DataConfig)
    model_cfg = load_config(_preset_file("model", model), by_section["model"], schema=ModelConfig) if model else (
        load_config(None, by_section["model"], schema=ModelConfig))
    return Config(data=data, model=model_cfg)


def _preset_file(section: str, name: str) -> Path:
    """`name` if it is a YAML file (any folder), else configs/<section>/<name>.yaml; a miss lists the presets."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"--{section} {name}: file not found (presets: {', '.join(presets(section))})")
        return p
    preset = CONFIGS_DIR / section / f"{name}.yaml"
    if not preset.is_file():
        raise UserError(f"--{section} {name}: no configs/{section}/{name}.yaml (presets: "
                        f"{', '.join(presets(section))}) and not a .yaml file")
    return preset


def run(args: argparse.Namespace) -> int:
    from indextts_ray.data.prepare import prepare_dataset  # Ray and torch load only when the command runs

    if args.data:
        cfg = load_prepare_config(str(_preset_file("data", args.data)), args.overrides, args.model, data_section=True)
    else:
        cfg = load_prepare_config(args.config, args.overrides, args.model)
    prepare_dataset(cfg, restart=args.restart)
    return 0
