"""The training contract: `TrainingModel.forward(batch, weights) -> dict of 0-dim tensors`.

Batch keys (B = batch, padding values are arbitrary, lengths say what is real):

    text_ids (B, T) long, text_lengths (B,)        codes (B, M) long, code_lengths (B,)
    spk_feats (B, Tf, D) float, spk_lengths (B,)   emo_feats (B, Te, D), emo_lengths (B,)   optional
                                                    (emo_feats without emo_lengths = all frames valid)
    speaker_ids (B,) long, -100 = ignore            emotion_ids (B,) long in 0..6, -100 = ignore  optional

Without `emo_feats` the speaker prompt is also the emotion reference (the official default). The emotion
vector is computed in the forward pass from the features, with gradients (never a cached vector).

Returned keys: loss (the weighted sum to backward), text_loss, mel_loss, mel_top1, mel_top5, stop_loss,
speaker_loss, speaker_acc, emotion_loss, emotion_acc, emotion_table_loss (float32), n_text_tokens, n_mel_tokens
(int64 counts of non-pad targets: real tokens + the first stop). `stop_loss` is the mean cross-entropy of each
sequence's stop-token target (already inside mel_loss as one of ~50 per second of targets); `weights.stop`
adds it once more per sequence, so that a small model learns to end its utterances (0 = the official loss). A loss whose inputs are absent is 0 with no graph;
a loss with weight 0 is still reported but computed without graph.

The emotion table is trained with MSE against the detached emo_vec: emo_vec is *added* to every speaker
latent, so its magnitude matters as much as its direction (cosine would leave the scale free).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from indextts_ray.model.config import LossWeights, ModelConfig
from indextts_ray.model.heads import TrainingHeads
from indextts_ray.model.losses import classification_loss, masked_lm_loss, masked_mse, target_mask
from indextts_ray.model.unifiedvoice import UnifiedVoice

__all__ = ["LossWeights", "TrainingModel", "METRIC_KEYS"]

METRIC_KEYS = (
    "loss",
    "text_loss",
    "mel_loss",
    "mel_top1",
    "mel_top5",
    "stop_loss",
    "speaker_loss",
    "speaker_acc",
    "emotion_loss",
    "emotion_acc",
    "emotion_table_loss",
    "n_mel_tokens",
    "n_text_tokens",
)


def _fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast so small classifier heads run (and their losses reduce) in fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


def _add(total: torch.Tensor, weight: float, loss: torch.Tensor) -> torch.Tensor:
    return total + weight * loss if weight > 0 else total


def _grad_if(weight: float) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if weight > 0 else torch.no_grad()


class TrainingModel(nn.Module):
    """UnifiedVoice (`self.model`, official keys) + training heads (`self.heads`) + the losses."""

    def __init__(self, cfg: ModelConfig, n_speakers: int = 0, model: UnifiedVoice | None = None) -> None:
        """`model`: an already built/loaded UnifiedVoice to wrap (e.g. from `load_official`); default a fresh one."""
        super().__init__()
        self.model = model if model is not None else UnifiedVoice(cfg)
        self.heads = TrainingHeads(cfg, n_speakers)

    @property
    def cfg(self) -> ModelConfig:
        """The architecture (the wrapped model's, so it follows `resize_text_vocab`)."""
        return self.model.cfg

    def set_grl_lambda(self, lam: float) -> None:
        """Set the gradient-reversal strength for the following forward passes (call every step)."""
        self.heads.grl.lam = float(lam)

    def forward(self, batch: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
        """Losses and metrics of one batch (module doc: keys in and out); backward `out["loss"]`."""
        m = self.model
        text_ids, codes = batch["text_ids"], batch["codes"]
        text_lengths, code_lengths = batch["text_lengths"], batch["code_lengths"]
        device = codes.device
        zero = torch.zeros((), device=device)
        out: dict[str, torch.Tensor] = {k: zero for k in METRIC_KEYS}

        speaker_latents = m.get_speaker_latents(batch["spk_feats"], batch["spk_lengths"])  # (B, n, D)
        if "emo_feats" in batch:
            emo_feats = batch["emo_feats"]
            emo_lengths = batch.get("emo_lengths")
            if emo_lengths is None:  # an unpadded emotion prompt
                emo_lengths = torch.full((emo_feats.size(0),), emo_feats.size(1), dtype=torch.long, device=device)
            emo_vec = m.get_emovec(emo_feats, emo_lengths)  # (B, D)
        else:
            emo_vec = m.get_emovec(batch["spk_feats"], batch["spk_lengths"])
        conds = m.build_conds(speaker_latents, emo_vec)  # (B, n+2, D)
        # run_gpt builds new tensors: the caller's text_ids / codes are never modified.
        gpt = m.run_gpt(conds, text_ids, text_lengths, codes, code_lengths)

        text_mask = target_mask(text_lengths.to(device), gpt.text_targets.size(1))  # (B, T+2)
        mel_mask = target_mask(code_lengths.to(device), gpt.mel_targets.size(1))  # (B, M+2)
        out["n_text_tokens"] = text_mask.sum()
        out["n_mel_tokens"] = mel_mask.sum()

        total = zero
        with _grad_if(weights.text):
            out["text_loss"], _ = masked_lm_loss(gpt.text_hidden, m.text_head, gpt.text_targets, text_mask)
        with _grad_if(weights.mel):
            out["mel_loss"], acc = masked_lm_loss(gpt.mel_hidden, m.mel_head, gpt.mel_targets, mel_mask, topk=(1, 5))
        out["mel_top1"], out["mel_top5"] = acc[1], acc[5]
        total = _add(_add(total, weights.text, out["text_loss"]), weights.mel, out["mel_loss"])
        with _grad_if(weights.stop):
            at_stop = gpt.mel_hidden[torch.arange(codes.size(0), device=device), code_lengths.to(device)]  # (B, D)
            stop = torch.full((codes.size(0),), m.cfg.stop_mel_token, dtype=torch.long, device=device)
            out["stop_loss"] = nn.functional.cross_entropy(m.mel_head(at_stop).float(), stop)
        total = _add(total, weights.stop, out["stop_loss"])

        h = self.heads
        speaker_ids = batch.get("speaker_ids")
        if speaker_ids is not None and h.speaker_classifier is not None:
            with _grad_if(weights.speaker), _fp32(device):
                logits = h.speaker_logits(emo_vec.float())  # GRL inside: reversed gradient into the emo path
                out["speaker_loss"], out["speaker_acc"] = classification_loss(logits, speaker_ids.to(device))
            total = _add(total, weights.speaker, out["speaker_loss"])

        emotion_ids = batch.get("emotion_ids")
        if emotion_ids is not None:
            emotion_ids = emotion_ids.to(device)
            with _grad_if(weights.emotion), _fp32(device):
                logits = h.emotion_classifier(emo_vec.float())
                out["emotion_loss"], out["emotion_acc"] = classification_loss(logits, emotion_ids)
            with _grad_if(weights.emotion_table), _fp32(device):
                pred = h.emotion_table(emotion_ids.clamp(min=0))  # (B, D); ignored rows are masked below
                out["emotion_table_loss"] = masked_mse(pred, emo_vec.detach(), emotion_ids)
            total = _add(total, weights.emotion, out["emotion_loss"])
            total = _add(total, weights.emotion_table, out["emotion_table_loss"])

        out["loss"] = total
        return out
