"""Turn a training checkpoint into an official-layout export directory (gpt.pth + config.yaml + sidecars)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from indextts_ray.config import Config
from indextts_ray.errors import UserError
from indextts_ray.model.checkpoint_io import export_checkpoint
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.ema import load_ema_weights
from indextts_ray.train.state import STATE_FILE


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete `step-*` checkpoint of a run (complete = its checksums file exists)."""
    steps = sorted(p for p in Path(run_dir).glob("step-*") if (p / "checksums.json").exists())
    if not steps:
        raise UserError(f"{run_dir}: no finished checkpoint (step-*/checksums.json); train first")
    return steps[-1]


def model_from_checkpoint(checkpoint_dir: Path) -> tuple[TrainingModel, Config]:
    """Rebuild the model from the architecture stored in the checkpoint (not from CLI flags), load weights.

    The weights are the EMA average when the checkpoint has one and `train.ema.use_for_export` is set.
    """
    blob = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    cfg = Config.model_validate(json.loads(blob["config"]))
    n_speakers = _n_speakers(blob["model"])
    model = TrainingModel(cfg.model, n_speakers=n_speakers)
    model.load_state_dict(blob["model"])
    if blob.get("ema") is not None and cfg.train.ema.use_for_export:
        load_ema_weights(model, blob["ema"])
    return model, cfg


def _n_speakers(state: dict) -> int:
    keys = [k for k in state if k.startswith("heads.speaker_classifier.") and k.endswith(".weight")]
    return int(state[sorted(keys)[-1]].shape[0]) if keys else 0


def export_run(source: Path, out_dir: Path) -> Path:
    """Export `source` to `out_dir`: a step-* dir as is; a run dir as `train.export_from` says (its `best/`
    export, or its latest checkpoint)."""
    source = Path(source)
    ckpt = source if (source / STATE_FILE).exists() else latest_checkpoint(source)
    if ckpt != source and _stored_config(ckpt).train.export_best:
        if not (source / "best" / "gpt.pth").exists():
            raise UserError(f"{source}: train.export_from takes best/, but no validation ran yet")
        return copy_dir(source / "best", Path(out_dir))
    model, cfg = model_from_checkpoint(ckpt)
    export_checkpoint(model, Path(out_dir))
    return Path(out_dir)


def _stored_config(checkpoint_dir: Path) -> Config:
    # mmap: only the config string is read, not gigabytes of weights and optimizer state
    blob = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    return Config.model_validate(json.loads(blob["config"]))


def copy_dir(src: Path, dst: Path) -> Path:
    """Replace `dst` by a copy of `src` (copied beside it first, so a crash never leaves a half export)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
