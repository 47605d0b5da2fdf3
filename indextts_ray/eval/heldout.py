"""The held-out set: a fixed seeded sample of validation targets with their prompts, and the clips the probes
look at.

Rows come from the training ingest (`data.ingest.heldout_rows`): each validation target with the prompt that
validation draws for it (another utterance of its speaker, cropped), so eval and training validation see the
same pairs. The probed clips are those prompts, labelled with their own speaker (the target's) and emotion
(`prompt_emotion_id`); each prompt is one clip even when several targets share it, so a probe never sees the
same vector on both sides of its split. Rows with their own prompt or emotion reference file are not probed
by emotion (unknown = -1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from indextts_ray.data.bucketing import BucketingSettings
from indextts_ray.data.config import PromptConfig
from indextts_ray.data.ingest import heldout_rows, make_spec
from indextts_ray.data.schema import decode_feats

CLIP_COLUMNS = ["prompt_id", "speaker", "prompt_feats", "prompt_frames", "feat_dim"]


def sample_rows(data_dir: str | Path, max_items: int, seed: int = 0, prompt: PromptConfig | None = None) -> pa.Table:
    """Up to `max_items` val targets, a seeded uniform sample (the same rows for every checkpoint), in row order,
    each with its validation prompt (`schema.BATCH_SCHEMA`)."""
    spec = make_spec([str(data_dir)], seed=seed, bucketing=BucketingSettings(1 << 30, 1 << 30, 1),
                     prompt=prompt or PromptConfig())
    return heldout_rows(spec, max_items, seed)


def prompt_clips(rows: pa.Table, data_dir: str | Path | None = None) -> pa.Table:
    """One row per distinct speaker prompt of `rows`: CLIP_COLUMNS + `emotion_id` of the prompt clip."""
    ids = rows.column("prompt_id").to_pylist()
    first = sorted({pid: i for i, pid in reversed(list(enumerate(ids)))}.values())  # first row of each prompt
    taken = rows.take(pa.array(first, pa.int64()))
    return taken.select(CLIP_COLUMNS).append_column("emotion_id", taken.column("prompt_emotion_id"))


def feats_batch(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded prompt features (B, T, D) float32 and their lengths (B,)."""
    frames = table.column("prompt_frames").to_pylist()
    dim = int(table.column("feat_dim")[0].as_py())
    out = torch.zeros(len(frames), max(frames, default=0), dim)
    for i, (blob, n) in enumerate(zip(table.column("prompt_feats").to_pylist(), frames)):
        out[i, :n] = torch.from_numpy(decode_feats(blob, n, dim).astype(np.float32))
    return out, torch.tensor(frames, dtype=torch.long)
