"""Validation mel/text loss and mel top-1 of a checkpoint on the held-out rows.

The numbers come from `TrainingModel.forward`, the function the training loop's validation also calls, so
they mean the same thing as the logged `val_loss`. Padding is not masked inside the official GPT (a short
text's stop-filled padding is visible to its codes), so batch composition moves the loss slightly: rows are
batched in length order, which keeps the padding (and that effect) small and the result deterministic.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from indextts_ray.model.config import LossWeights
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.collate import collate, to_device


@torch.no_grad()
def validation_losses(model: TrainingModel, rows: pa.Table, device: torch.device, batch_size: int = 8) -> dict:
    """Token-weighted means over `rows`: val_loss (mel), val_text_loss, val_mel_top1, plus the token counts."""
    was_training = model.training
    model.eval()
    order = np.argsort(rows.column("n_text").to_numpy() + rows.column("n_codes").to_numpy(), kind="stable")
    mel = top1 = text = n_mel = n_text = 0.0
    try:
        for start in range(0, len(order), batch_size):
            batch = collate(rows.take(pa.array(order[start : start + batch_size])))
            batch.pop("emotion_ids")  # the classifier heads are not what this measures
            out = model(to_device(batch, device), LossWeights())
            n, nt = float(out["n_mel_tokens"]), float(out["n_text_tokens"])
            mel += float(out["mel_loss"]) * n
            top1 += float(out["mel_top1"]) * n
            text += float(out["text_loss"]) * nt
            n_mel, n_text = n_mel + n, n_text + nt
    finally:
        model.train(was_training)
    return {"val_loss": mel / max(n_mel, 1), "val_text_loss": text / max(n_text, 1),
            "val_mel_top1": top1 / max(n_mel, 1), "n_mel_tokens": int(n_mel), "n_text_tokens": int(n_text)}
