"""Validation losses: one routine for the training loop's validation and `indextts-ray eval`'s held-out losses.

Both feed it the batches of the validation plan (`data/ingest.py`: token-budget batches, prompts drawn once), so
a logged `val_loss` and a reported one of the same weights are the same number. The batches matter: padding is
not masked inside the official GPT (a short text's stop-filled padding is visible to its codes), so another
batching moves the loss slightly.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import torch

from indextts_ray.model.config import LossWeights
from indextts_ray.train.collate import collate, to_device

# the losses are read, not trained: the classifier heads are not what validation measures
MEL_TEXT = LossWeights(speaker=0.0, emotion=0.0, emotion_table=0.0)


@torch.no_grad()
def validation_sums(model, tables: Iterable[pa.Table], device: torch.device,
                    amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Token-weighted sums over `tables` (batch rows, one table per batch), float64 on `device`:
    (mel_loss·n_mel, mel_top1·n_mel, text_loss·n_text, n_mel, n_text). Sums, so ranks can add theirs up.

    The caller puts the model in eval mode (and swaps in EMA weights when those are evaluated).
    """
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    for table in tables:
        batch = to_device(collate(table), device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(batch, MEL_TEXT)
        n, nt = float(out["n_mel_tokens"]), float(out["n_text_tokens"])
        totals += torch.tensor([float(out["mel_loss"]) * n, float(out["mel_top1"]) * n,
                                float(out["text_loss"]) * nt, n, nt], dtype=torch.float64, device=device)
    return totals


def validation_metrics(totals: torch.Tensor) -> dict:
    """`validation_sums` (of one rank or all) -> val_loss (mel), val_mel_top1, val_text_loss."""
    mel, top1, text, n, nt = totals.tolist()
    return {"val_loss": mel / max(n, 1), "val_mel_top1": top1 / max(n, 1), "val_text_loss": text / max(nt, 1)}
