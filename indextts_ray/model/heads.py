"""Training-only modules, kept out of the official key set (exported to sidecar files).

* `GradientReversal`: identity forward, -lambda * grad backward (Ganin & Lempitsky 2015), lambda set per step.
* speaker classifier on GRL(emo_vec): the emotion encoder learns to make emo_vec speaker-agnostic (Stage 2).
* emotion classifier on emo_vec (no reversal): keeps emotion information in emo_vec when labels exist.
* emotion-label table: `n_emotions x emotion_table_dim` embedding + projection to model_dim, trained to
  reproduce the (detached) emo_vec of labelled clips, so synthesis can pass `emo_vec=table(label)`.
"""

from __future__ import annotations

import torch
from torch import nn

from indextts_ray.model.config import ModelConfig


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by -lam in the backward pass."""
    return _ReverseGrad.apply(x, lam)


class GradientReversal(nn.Module):
    """Module form of `grad_reverse`; `lam` is a plain attribute (not state) so the schedule can set it."""

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = float(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"


class MLPClassifier(nn.Module):
    """Linear -> GELU -> Dropout -> Linear (keys `net.0.*`, `net.3.*`)."""

    def __init__(self, dim: int, hidden: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EmotionTable(nn.Module):
    """Label id (B,) -> emo_vec (B, model_dim); `labels` names the rows (ids 0..n-1)."""

    def __init__(self, labels: list[str], table_dim: int, model_dim: int) -> None:
        super().__init__()
        self.labels = list(labels)
        self.table = nn.Embedding(len(labels), table_dim)
        self.proj = nn.Linear(table_dim, model_dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(ids))

    def emo_vec(self, label: str) -> torch.Tensor:
        """(1, model_dim) emo_vec for a label name, ready for `UnifiedVoice.forward(..., emo_vec=...)`."""
        if label not in self.labels:
            raise ValueError(f"unknown emotion {label!r}; known: {', '.join(self.labels)}")
        idx = torch.tensor([self.labels.index(label)], device=self.table.weight.device)
        return self(idx)


class TrainingHeads(nn.Module):
    """Everything trained beside UnifiedVoice. `speaker_classifier` is None when n_speakers == 0."""

    def __init__(self, cfg: ModelConfig, n_speakers: int = 0) -> None:
        super().__init__()
        if n_speakers < 0:
            raise ValueError(f"n_speakers must be >= 0, got {n_speakers}")
        d, h = cfg.model_dim, cfg.speaker_classifier_hidden
        self.n_speakers = n_speakers
        self.grl = GradientReversal(1.0)
        self.speaker_classifier = (
            MLPClassifier(d, h, n_speakers, cfg.speaker_classifier_dropout) if n_speakers > 0 else None
        )
        # Same MLP shape as the speaker classifier (no separate config knobs needed so far).
        self.emotion_classifier = MLPClassifier(d, h, len(cfg.emotion_labels), cfg.speaker_classifier_dropout)
        self.emotion_table = EmotionTable(cfg.emotion_labels, cfg.emotion_table_dim, d)

    def speaker_logits(self, emo_vec: torch.Tensor) -> torch.Tensor:
        """(B, D) emo_vec -> (B, n_speakers) logits through the gradient-reversal layer."""
        if self.speaker_classifier is None:
            raise ValueError("no speaker classifier: build TrainingHeads with n_speakers > 0")
        return self.speaker_classifier(self.grl(emo_vec))
