"""Typed, composable YAML configs.

A config file is a partial `Config`. Composition (`defaults:`), then the file itself, then `a.b=c` overrides
are deep-merged in that order, and the result is validated once. Every problem is reported together, each
with the file, the key path and, for unknown keys, the closest valid key.

    defaults:
      - base.yaml            # another whole config, relative to this file (or to configs/)
      - model: tiny          # configs/model/tiny.yaml merged into the `model:` section
    train:
      lr: 2.0e-4
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from indextts_ray.data.config import DataConfig
from indextts_ray.errors import ConfigError
from indextts_ray.model.config import ModelConfig
from indextts_ray.pipeline.config import PipelineConfig
from indextts_ray.schema import StrictModel
from indextts_ray.train.config import TrainConfig
from indextts_ray.tune.config import TuneConfig

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class RunConfig(StrictModel):
    """Where a run lives. Resume = the same `output_dir` + `name` (never timestamped)."""

    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: str = "runs"
    seed: int = 1234


class Config(StrictModel):
    """The whole resolved configuration of one command."""

    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    pipeline: PipelineConfig = PipelineConfig()
    tune: TuneConfig = TuneConfig()


# A file under configs/<section>/ holds one section (e.g. configs/model/tiny.yaml is a ModelConfig). Anywhere
# else, a file holds one section when it says so (`section: data` at its top), or when its keys are all one
# section's fields and no whole-config section (a copy of configs/data/demo.yaml in the working directory).
SECTION_SCHEMAS: dict[str, type[BaseModel]] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
SECTION_KEY = "section"


def schema_for(path: str | os.PathLike) -> type[BaseModel]:
    """The schema a config file is validated against: its section's, or the whole `Config`."""
    p = Path(path).resolve()
    if p.parent.parent == CONFIGS_DIR and p.parent.name in SECTION_SCHEMAS:
        return SECTION_SCHEMAS[p.parent.name]
    if not p.is_file():
        return Config  # loading reports the missing file
    raw = _load_yaml(p)
    marked = raw.get(SECTION_KEY)
    if marked is not None:
        if marked not in SECTION_SCHEMAS:
            raise ConfigError(f"{p}: {SECTION_KEY}: {marked!r} is not one of {', '.join(SECTION_SCHEMAS)}")
        return SECTION_SCHEMAS[marked]
    keys = set(raw) - {"defaults"}
    if keys and not keys & set(Config.model_fields):
        matches = [schema for schema in SECTION_SCHEMAS.values() if keys <= set(schema.model_fields)]
        if len(matches) == 1:
            return matches[0]
    return Config


def presets(section: str) -> list[str]:
    """Names of the files in configs/<section>/ (what `--model NAME` and `defaults: [section: NAME]` take)."""
    return sorted(f.stem for f in (CONFIGS_DIR / section).glob("*.yaml"))


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike | None, overrides: list[str] | None = None, schema: type[BaseModel] | None = None
):
    """Load `path` (or only defaults when None), apply `key.sub=value` overrides, validate against `schema`
    (default: `schema_for(path)`)."""
    schema = schema or (schema_for(path) if path is not None else Config)
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        path = Path(path)
        raw = _load_composed(path, seen=())
        origin = str(path)
    for item in overrides or []:
        _apply_override(raw, item)
    if overrides:
        origin += f" (+ overrides {' '.join(overrides)})"
    return validate_config(raw, schema, origin)


def validate_config(raw: dict, schema: type[BaseModel] = Config, origin: str = "<dict>"):
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        problems = [_describe_error(err, schema) for err in e.errors()]
        raise ConfigError(f"{origin}: invalid config: " + "; ".join(problems)) from None


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _resolve_include(name: str, base_dir: Path) -> Path:
    for candidate in (base_dir / name, CONFIGS_DIR / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"included config not found: {name} (looked in {base_dir} and {CONFIGS_DIR})")


def _load_composed(path: Path, seen: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular `defaults:` include")
    data = _load_yaml(path)
    data.pop(SECTION_KEY, None)  # the schema marker, read by `schema_for`
    includes = data.pop("defaults", []) or []
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: `defaults:` must be a list")
    merged: dict = {}
    for inc in includes:
        if isinstance(inc, str):
            part = _load_composed(_resolve_include(inc, path.parent), seen + (path,))
        elif isinstance(inc, dict) and len(inc) == 1:
            (section, name), = inc.items()
            if not (CONFIGS_DIR / section / f"{name}.yaml").is_file():
                raise ConfigError(f"{path}: `defaults: [{section}: {name}]`: no configs/{section}/{name}.yaml "
                                  f"(presets: {', '.join(presets(section)) or 'none'})")
            file = _resolve_include(f"{section}/{name}.yaml", CONFIGS_DIR)
            part = {section: _load_composed(file, seen + (path,))}
        else:
            raise ConfigError(f"{path}: each `defaults:` entry is 'file.yaml' or 'section: name', got {inc!r}")
        merged = deep_merge(merged, part)
    return deep_merge(merged, data)


def deep_merge(base: dict, top: dict) -> dict:
    """Return base updated by top, recursing into nested mappings (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = parsed


def _describe_error(err: dict, schema: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        valid = _fields_at(schema, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.5)
        hint = f" (did you mean {'.'.join([*map(str, err['loc'][:-1]), close[0]])!r}?)" if close else ""
        return f"unknown key {loc!r}{hint}; valid keys here: {', '.join(sorted(valid))}"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _fields_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    model = schema
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


# ----------------------------------------------------------------------------- resolved output


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def config_hash(cfg: BaseModel) -> str:
    """Stable sha256 of the resolved config (canonical JSON)."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def write_resolved_config(cfg: BaseModel, run_dir: str | os.PathLike) -> Path | str:
    """Write `config.resolved.yaml` (with its hash in the first line) into `run_dir` (maybe a URI), atomically."""
    from indextts_ray import storage

    storage.makedirs(run_dir)
    text = f"# config_hash: {config_hash(cfg)}\n" + dump_config(cfg)
    out = storage.write_text(storage.join(run_dir, "config.resolved.yaml"), text)
    return out if storage.is_remote(out) else Path(out)
