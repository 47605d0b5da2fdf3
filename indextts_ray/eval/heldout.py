"""The held-out set: a fixed seeded sample of validation targets with their prompts, and the clips the probes
look at (those prompts, or with `split_clips` every stored utterance of some splits).

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
import pyarrow.compute as pc
import torch

from indextts_ray import storage
from indextts_ray.data.bucketing import BucketingSettings
from indextts_ray.data.config import PromptConfig
from indextts_ray.data.ingest import heldout_rows, make_spec, utterance_clips
from indextts_ray.data.schema import decode_feats
from indextts_ray.data.store import list_shards, read_table

CLIP_COLUMNS = ["prompt_id", "speaker", "prompt_feats", "prompt_frames", "feat_dim"]
LIGHT_COLUMNS = ["id", "speaker", "emotion_id"]
UTTERANCE_COLUMNS = ["id", "speaker", "feats", "n_frames", "feat_dim", "emotion_id"]
MAX_CLIP_FRAMES = 750  # 15 s at 50 Hz: IndexTTS2 cuts prompts there


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


def split_clips(data_dir: str | Path, splits: tuple[str, ...], max_clips: int, seed: int = 0) -> pa.Table:
    """Stored utterances of `splits` as clips (`prompt_clips` columns: their own features, the first
    MAX_CLIP_FRAMES frames, labelled with their own speaker and emotion), in id order; a seeded sample of
    `max_clips` when there are more. Many more clips than the val prompts: a probe's test split can then be
    large enough to judge its goal (`probes.judge`)."""
    files = split_files(storage.pathlike(data_dir), splits)
    rows = light_rows(files)
    ids = rows.column("id").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids, kind="stable")  # deterministic whatever the shard order
    if len(order) > max_clips:
        order = order[np.sort(np.random.default_rng(seed).choice(len(order), max_clips, replace=False))]
    return utterance_clips(take_rows(files, row_picks(rows, order), UTTERANCE_COLUMNS), MAX_CLIP_FRAMES)


def split_files(data_dir: Path, splits: tuple[str, ...]) -> list[Path]:
    return [f for split in splits for f in list_shards(data_dir / split)]


def take_rows(files: list[Path], picks: pa.Table, columns: list[str]) -> pa.Table:
    """`columns` of the rows (file, row) in `picks`, in the order of `picks`; reads only those columns."""
    out = []
    for i, f in enumerate(files):
        mine = picks.filter(pc.equal(picks.column("file"), i))
        if len(mine):
            t = read_table(f, columns).take(mine.column("row"))
            out.append(t.append_column("order", mine.column("order")))
    return pa.concat_tables(out).sort_by("order").drop_columns(["order"])


def light_rows(files: list[Path]) -> pa.Table:
    """LIGHT_COLUMNS of every row of `files`, plus its file number and row within the file."""
    tables = []
    for i, f in enumerate(files):
        t = read_table(f, LIGHT_COLUMNS)
        tables.append(t.append_column("file", pa.array(np.full(len(t), i, np.int32)))
                       .append_column("row", pa.array(np.arange(len(t), dtype=np.int64))))
    return pa.concat_tables(tables)


def row_picks(rows: pa.Table, index: np.ndarray) -> pa.Table:
    """(file, row, order) of `rows[index]`, for `take_rows`."""
    return rows.select(["file", "row"]).take(pa.array(index, pa.int64())).append_column(
        "order", pa.array(np.arange(len(index), dtype=np.int64)))
