"""Validation mel/text loss and mel top-1 of a checkpoint: the training loop's validation, run in-process.

Same batches (the validation plan of the run that trained the export: its seed, batching and prompt settings,
over `val/` of the given data), same token-weighted routine (`train/validation.py`), so the reported `val_loss`
is the one a 1-worker run logged for the same weights (at W workers validation splits a batch when needed to
give every rank as many, which moves the loss slightly: padding is not masked inside the official GPT).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml

from indextts_ray.config import Config
from indextts_ray.data.ingest import VAL_EPOCH, CorpusIndex, IngestSpec, fetch_entries, plan_split
from indextts_ray.data.store import RowStore
from indextts_ray.train.validation import validation_metrics, validation_sums


def run_config(export_dir: str | Path) -> Config:
    """The resolved config of the run an export came from (`<export>/../config.resolved.yaml`), else defaults."""
    path = Path(export_dir).parent / "config.resolved.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return Config.model_validate(data or {})


def val_plan_tables(spec: IngestSpec, max_batches: int | None = None) -> Iterator[pa.Table]:
    """The validation plan's batches (one table each, in plan order), fetched in this process (no Ray)."""
    plan = plan_split(CorpusIndex(spec), spec, "val", VAL_EPOCH)
    store = RowStore(list(spec.files), np.asarray(spec.counts))
    for j in range(min(len(plan.batches), max_batches or len(plan.batches))):
        yield fetch_entries(pa.Table.from_pylist([{**plan.entry(j), "epoch": VAL_EPOCH}]), store,
                            spec.max_prompt_frames)


@torch.no_grad()
def validation_losses(model, data_dir: str | Path, device: torch.device, cfg: Config) -> dict:
    """val_loss (mel), val_text_loss, val_mel_top1 and the token counts over `data_dir`'s validation plan under
    the run config `cfg` (`run_config`)."""
    from indextts_ray.train.trainer import ingest_spec

    tc = cfg.train
    spec = ingest_spec(cfg.model_copy(update={"train": tc.model_copy(update={"data_dir": str(data_dir),
                                                                             "mixture": None})}))
    was_training = model.training
    model.eval()
    try:
        totals = validation_sums(model, val_plan_tables(spec, tc.val_max_batches), device)
    finally:
        model.train(was_training)
    _, _, _, n_mel, n_text = totals.tolist()
    return {**validation_metrics(totals), "n_mel_tokens": int(n_mel), "n_text_tokens": int(n_text)}
