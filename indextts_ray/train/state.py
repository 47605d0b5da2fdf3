"""Everything a run needs to continue exactly, saved and loaded in one place.

`RunState` is the only holder of the run's counters and decisions (step, epoch, data position, GRL λ,
speaker-loss weight, best validation loss, ...): the recipe reads and writes it, the GRL module and the logs are
set from it, and a checkpoint stores it whole (under the `progress` key of format 1).

Randomness is not snapshotted: every micro-batch reseeds torch from (seed, epoch, its plan entry) and the data
order is a function of (seed, epoch), so the step counter and the data position *are* the RNG state.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write, atomic_write_json, sha256_file
from indextts_ray.train.sharding import full_state_dicts, is_sharded, load_full_state_dicts

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
SUMMARY_FILE = "summary.json"  # run state + config beside state.pt: what the driver's resume checks read


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # plan entries (global micro-batches) consumed in this epoch, over all ranks
    tokens_seen: int = 0
    total_steps: int = 0  # fixed at the first start so the LR schedule survives a world-size change
    world_size: int = 1
    grad_accum: int = 1
    best_val: float = math.inf
    grl_lambda: float = 1.0  # the values training uses: band control's, else the config's (`resolve_adversary`)
    speaker_weight: float = 0.0
    skipped_steps: int = 0
    band: dict = field(default_factory=dict)  # BandController.state_dict(): resume continues the same control
    rollbacks: int = 0  # reloads of the last checkpoint (spike guard or band control: `Recipe.rollback`)
    guard: dict = field(default_factory=dict)  # SpikeGuard.state_dict(): running means, skip counters
    early_stop: dict = field(default_factory=dict)  # EarlyStopping.state_dict(): best value/step, patience used
    data: dict = field(default_factory=dict)  # {"fingerprint": ...} of the prepared data: resume refuses other data


def step_seed(seed: int, epoch: int, batch: int) -> int:
    """Seed for one micro-batch: its epoch and index in that epoch's plan (independent of rank and world size)."""
    return ((seed * 1_000_003 + epoch) * 2**32 + batch) % (2**63 - 1)


def gather_state(model, optimizer, ema=None) -> dict:
    """The model, optimizer and EMA entries of a checkpoint, for `save_state`: always the whole (unsharded) state.

    An FSDP-sharded model makes this a collective: every rank calls it, rank 0 gets the state (others empty).
    """
    model_state, optimizer_state = full_state_dicts(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state, "ema": ema.state_dict() if ema is not None else None}


def save_state(directory: Path, *, weights: dict, scheduler, scaler, state: RunState, config: dict) -> Path:
    """Write `state.pt` (atomic), `summary.json` and `checksums.json` (last) into `directory` (`weights`: from
    `gather_state`). The summary lets the driver check a resume without reading the weights (a download from
    an object store)."""
    directory.mkdir(parents=True, exist_ok=True)
    blob = {
        "format_version": FORMAT_VERSION,
        "model": weights["model"],
        "optimizer": weights["optimizer"],
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": asdict(state),
        "config": json.dumps(config),
        "ema": weights["ema"],
    }
    path = atomic_write(directory / STATE_FILE, lambda tmp: torch.save(blob, tmp))
    atomic_write_json(directory / SUMMARY_FILE, {"progress": blob["progress"], "config": config})
    atomic_write_json(directory / "checksums.json", {STATE_FILE: sha256_file(path)})
    return path


def load_state(directory: Path, *, model, optimizer, scheduler, scaler, ema=None) -> tuple[RunState, dict]:
    """Restore everything from `directory`; return its run state and resolved config (JSON dict); verify the
    checksum; refuse unknown or missing keys.

    A checkpoint without an average (written before EMA was switched on) restarts `ema` at the restored weights.
    An FSDP-sharded model loads the same (whole-model) checkpoint; then every rank must call this.
    """
    path = directory / STATE_FILE
    sums = json.loads((directory / "checksums.json").read_text())
    if sha256_file(path) != sums[STATE_FILE]:
        raise DataError(f"{path}: checksum mismatch (corrupt checkpoint); delete it to resume from the previous one")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.pop("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format is not {FORMAT_VERSION}")
    model_state, optimizer_state = blob.pop("model"), blob.pop("optimizer")
    if is_sharded(model):  # every rank keeps its shard of the whole state
        load_full_state_dicts(model, optimizer, model_state, optimizer_state)
    else:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(blob.pop("scheduler"))
    scaler.load_state_dict(blob.pop("scaler"))
    state = RunState(**blob.pop("progress"))
    config = json.loads(blob.pop("config"))
    ema_state = blob.pop("ema", None)  # absent in checkpoints written before EMA existed
    if ema is not None and ema_state is not None:
        ema.load_state_dict(ema_state)
    elif ema is not None:
        ema.reset(model)
    if blob:
        raise DataError(f"{path}: unexpected keys {sorted(blob)}")
    return state, config
