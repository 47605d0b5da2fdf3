"""Turn a training checkpoint into an official-layout export directory (gpt.pth + config.yaml + sidecars).

Runs, checkpoints and export targets may be object-store URIs (`storage.py`): checkpoints are read from a
local download, and an export is written locally and uploaded with gpt.pth last (its presence = complete).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import torch

from indextts_ray import storage
from indextts_ray.config import Config
from indextts_ray.errors import UserError
from indextts_ray.model.checkpoint_io import export_checkpoint
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.ema import load_ema_weights
from indextts_ray.train.state import STATE_FILE, SUMMARY_FILE

EXPORT_MARKER = "gpt.pth"  # uploaded last: an export on a store is complete when it exists


def latest_checkpoint(run_dir: Path | str) -> Path | str:
    """The newest complete `step-*` checkpoint of a run (complete = its checksums file exists; on a store also
    its state, as objects of one upload appear one by one). A URI for a run on an object store."""
    if not storage.is_remote(run_dir):
        steps = sorted(p for p in Path(run_dir).glob("step-*") if (p / "checksums.json").exists())
    else:
        steps = [c for c in (storage.join(run_dir, n) for n in storage.listdir(run_dir) if n.startswith("step-"))
                 if storage.is_file(storage.join(c, "checksums.json")) and storage.is_file(storage.join(c, STATE_FILE))]
    if not steps:
        raise UserError(f"{run_dir}: no finished checkpoint (step-*/checksums.json); train first")
    return steps[-1]


@contextlib.contextmanager
def state_file(checkpoint_dir: Path | str):
    """A local path of the checkpoint's state.pt (downloaded for the `with` body when it is on a store)."""
    with storage.local_copy(storage.join(checkpoint_dir, STATE_FILE)) as path:
        yield path


def saved_summary(checkpoint_dir: Path | str) -> dict:
    """{"progress": run state, "config": resolved config} of a checkpoint: its summary.json, or (checkpoints
    written before it) its state.pt, memory-mapped so only those entries are read (downloaded from a store)."""
    summary = storage.join(checkpoint_dir, SUMMARY_FILE)
    if storage.is_file(summary):
        return storage.read_json(summary)
    with state_file(checkpoint_dir) as path:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {"progress": blob["progress"], "config": json.loads(blob["config"])}


def model_from_checkpoint(checkpoint_dir: Path | str) -> tuple[TrainingModel, Config]:
    """Rebuild the model from the architecture stored in the checkpoint (not from CLI flags), load weights.

    The weights are the EMA average when the checkpoint has one and `train.ema.use_for_export` is set.
    """
    with state_file(checkpoint_dir) as path:
        blob = torch.load(path, map_location="cpu", weights_only=True)
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


def export_run(source: Path | str, out_dir: Path | str) -> Path | str:
    """Export `source` to `out_dir` (either may be a URI): a step-* dir as is; a run dir as
    `train.export_from` says (its `best/` export, or its latest checkpoint)."""
    source = source if storage.is_remote(source) else Path(source)
    ckpt = source if storage.is_file(storage.join(source, STATE_FILE)) else latest_checkpoint(source)
    if ckpt != source and _stored_config(ckpt).train.export_best:
        best = storage.join(source, "best")
        if not storage.exists(storage.join(best, EXPORT_MARKER)):
            raise UserError(f"{source}: train.export_from takes best/, but no validation ran yet")
        return copy_dir(best, out_dir)
    model, cfg = model_from_checkpoint(ckpt)
    if not storage.is_remote(out_dir):
        export_checkpoint(model, Path(out_dir))
        return Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="indextts-export-") as tmp:
        export_checkpoint(model, Path(tmp))
        return storage.publish_dir(tmp, out_dir, last=(EXPORT_MARKER,))


def _stored_config(checkpoint_dir: Path | str) -> Config:
    return Config.model_validate(saved_summary(checkpoint_dir)["config"])


def copy_dir(src: Path | str, dst: Path | str) -> Path | str:
    """Replace `dst` by a copy of `src` (locally copied beside it first, so a crash never leaves a half export;
    on a store gpt.pth is written last)."""
    if not storage.is_remote(src) and not storage.is_remote(dst):
        return storage.swap_local_dir(Path(src), Path(dst))
    return storage.copy_tree(src, dst, last=(EXPORT_MARKER,))
