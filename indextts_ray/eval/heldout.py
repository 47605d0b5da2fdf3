"""The held-out set: a fixed seeded sample of val rows, and the clips the probes look at.

A shard row holds the *target's* text and codes but the features of its *speaker prompt* (another utterance
of the same speaker, `prompt_id`). So the clip whose emotion vector and speaker latents we can compute is
the prompt: its speaker is the row's speaker, its emotion is the emotion of row `prompt_id` (looked up in
all shards; unknown = -1). With `data.prompt.same_emotion=no` that is often not the target's emotion, which
is why the target's label is not used. Each prompt is one clip even when several rows share it, so a probe
never sees the same vector on both sides of its split. Rows' separate emotion references (`emo_feats`) are
not probed: their speaker is not recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from indextts_ray.data.schema import decode_feats
from indextts_ray.train.shards import RowReader, ShardIndex, list_shards

CLIP_COLUMNS = ["prompt_id", "speaker", "prompt_feats", "prompt_frames", "feat_dim"]


def sample_rows(data_dir: str | Path, max_items: int, seed: int = 0) -> pa.Table:
    """Up to `max_items` val rows, a seeded uniform sample (the same rows for every checkpoint), in shard order."""
    index = ShardIndex(list_shards(Path(data_dir) / "val"))
    n = len(index)
    rows = np.arange(n) if n <= max_items else np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False))
    return RowReader(index).read(rows)


def emotions_of(data_dir: str | Path, ids: list[str]) -> dict[str, int]:
    """emotion_id of the given row ids, searched in every train and val shard (reads two columns only)."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    found: dict[str, int] = {}
    for split in ("train", "val"):
        if not (Path(data_dir) / split).is_dir():
            continue
        for f in sorted((Path(data_dir) / split).glob("shard-*.parquet")):
            t = pq.read_table(f, columns=["id", "emotion_id"])
            t = t.filter(pc.is_in(t.column("id"), value_set=wanted))
            found.update(zip(t.column("id").to_pylist(), t.column("emotion_id").to_pylist()))
    return found


def prompt_clips(rows: pa.Table, data_dir: str | Path) -> pa.Table:
    """One row per distinct speaker prompt of `rows`: CLIP_COLUMNS + `emotion_id` of the prompt clip."""
    ids = rows.column("prompt_id").to_pylist()
    first = sorted({pid: i for i, pid in reversed(list(enumerate(ids)))}.values())  # first row of each prompt
    clips = rows.select(CLIP_COLUMNS).take(pa.array(first, pa.int64()))
    emotion = emotions_of(data_dir, clips.column("prompt_id").to_pylist())
    labels = [int(emotion.get(pid, -1)) for pid in clips.column("prompt_id").to_pylist()]
    return clips.append_column("emotion_id", pa.array(labels, pa.int16()))


def feats_batch(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded prompt features (B, T, D) float32 and their lengths (B,)."""
    frames = table.column("prompt_frames").to_pylist()
    dim = int(table.column("feat_dim")[0].as_py())
    out = torch.zeros(len(frames), max(frames, default=0), dim)
    for i, (blob, n) in enumerate(zip(table.column("prompt_feats").to_pylist(), frames)):
        out[i, :n] = torch.from_numpy(decode_feats(blob, n, dim).astype(np.float32))
    return out, torch.tensor(frames, dtype=torch.long)
