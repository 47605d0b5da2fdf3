"""Masked losses and metrics. All of them avoid host syncs (no `.item()`, no data-dependent shapes except the
boolean selection of target positions), and return 0 instead of NaN when nothing is selected."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def target_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) lengths -> (B, width) bool: the first length + 1 positions (real targets + the first stop)."""
    return torch.arange(width, device=lengths.device)[None, :] <= lengths[:, None]


def masked_lm_loss(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, mask: torch.Tensor, topk: tuple[int, ...] = ()
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Mean cross-entropy of `head(hidden)` over `mask`ed positions, plus top-k accuracies.

    The head runs only on selected positions (padding costs no vocab projection); logits are cast to fp32
    before the softmax so bf16 autocast does not degrade the loss.
    """
    sel = hidden[mask]  # (N, D)
    logits = head(sel).float()  # (N, V)
    tgt = targets[mask]  # (N,)
    n = tgt.numel()
    loss = F.cross_entropy(logits, tgt, reduction="sum") / max(n, 1)
    accs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for k in topk:
            k_eff = min(k, logits.size(-1))
            hit = (logits.topk(k_eff, dim=-1).indices == tgt[:, None]).any(dim=-1)
            accs[k] = hit.float().sum() / max(n, 1)
    return loss, accs


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cross-entropy and accuracy over labels != -100 (0 and 0 when none is labelled)."""
    logits = logits.float()
    valid = labels != IGNORE
    count = valid.sum().clamp(min=1)
    per_item = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")  # (B,)
    loss = (per_item * valid).sum() / count
    with torch.no_grad():
        acc = ((logits.argmax(-1) == labels) & valid).sum().float() / count
    return loss, acc


def masked_mse(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error over rows whose label != -100 (mean over elements of those rows)."""
    valid = (labels != IGNORE).float()  # (B,)
    per_row = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B,)
    return (per_row * valid).sum() / valid.sum().clamp(min=1)
