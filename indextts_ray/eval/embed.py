"""Per-clip representations the probes and cluster plots use: the emotion vector and the speaker latents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from indextts_ray.eval.heldout import feats_batch
from indextts_ray.model.unifiedvoice import UnifiedVoice


@dataclass
class ClipEmbeddings:
    """N clips: labels and float32 vectors."""

    clip_ids: list[str]
    speakers: np.ndarray  # (N,) str
    emotion_ids: np.ndarray  # (N,) int, -1 = unknown
    emo_vec: np.ndarray  # (N, D) what `get_emovec` gives for the clip
    speaker_latent: np.ndarray  # (N, D) the clip's speaker latents (n, D) averaged over the n latents


@torch.no_grad()
def embed_clips(model: UnifiedVoice, clips: pa.Table, device: torch.device, batch_size: int = 16) -> ClipEmbeddings:
    """Run both conditioners over the clips of `heldout.prompt_clips` in batches (eval mode)."""
    was_training = model.training
    model.eval()
    emo, spk = [], []
    try:
        for start in range(0, len(clips), batch_size):
            feats, lengths = feats_batch(clips.slice(start, batch_size))
            feats, lengths = feats.to(device), lengths.to(device)
            emo.append(model.get_emovec(feats, lengths).float().cpu())  # (b, D)
            spk.append(model.get_speaker_latents(feats, lengths).float().mean(dim=1).cpu())  # (b, n, D) -> (b, D)
    finally:
        model.train(was_training)
    dim = model.cfg.model_dim
    return ClipEmbeddings(
        clip_ids=clips.column("prompt_id").to_pylist(),
        speakers=np.array(clips.column("speaker").to_pylist(), dtype=object),
        emotion_ids=clips.column("emotion_id").to_numpy().astype(np.int64),
        emo_vec=torch.cat(emo).numpy() if emo else np.zeros((0, dim), np.float32),
        speaker_latent=torch.cat(spk).numpy() if spk else np.zeros((0, dim), np.float32),
    )
