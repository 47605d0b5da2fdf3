"""Turn a training checkpoint into an official-layout export directory (gpt.pth + config.yaml + sidecars)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from indextts_ray.config import Config
from indextts_ray.errors import UserError
from indextts_ray.model.checkpoint_io import export_checkpoint
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.state import STATE_FILE


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete `step-*` checkpoint of a run (complete = its checksums file exists)."""
    steps = sorted(p for p in Path(run_dir).glob("step-*") if (p / "checksums.json").exists())
    if not steps:
        raise UserError(f"{run_dir}: no finished checkpoint (step-*/checksums.json); train first")
    return steps[-1]


def model_from_checkpoint(checkpoint_dir: Path) -> tuple[TrainingModel, Config]:
    """Rebuild the model from the architecture stored in the checkpoint (not from CLI flags), load weights."""
    blob = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    cfg = Config.model_validate(json.loads(blob["config"]))
    n_speakers = _n_speakers(blob["model"])
    model = TrainingModel(cfg.model, n_speakers=n_speakers)
    model.load_state_dict(blob["model"])
    return model, cfg


def _n_speakers(state: dict) -> int:
    keys = [k for k in state if k.startswith("heads.speaker_classifier.") and k.endswith(".weight")]
    return int(state[sorted(keys)[-1]].shape[0]) if keys else 0


def export_run(source: Path, out_dir: Path) -> Path:
    """Export `source` (a run dir -> its latest checkpoint, or a step-* dir) to `out_dir`."""
    source = Path(source)
    ckpt = source if (source / STATE_FILE).exists() else latest_checkpoint(source)
    model, cfg = model_from_checkpoint(ckpt)
    export_checkpoint(model, Path(out_dir))
    return Path(out_dir)
