"""From validated metadata to a fixed shard plan: prompt candidates, train/val split, shard membership.

The plan is a pure function of the accepted rows and the config, fixed before any audio is decoded, so a
rerun rebuilds exactly the shards it did not finish, and two runs write the same shards.

    accepted rows --pair_table--> prompt candidates (ids, paths, durations)   (+ pairing rejections)
                  --split_rows--> train / val by hash of id (or speaker)
                  --plan_shards--> per split, rows in hash order, cut at shard_rows or ~shard_mb
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.config import DataConfig, SplitConfig
from indextts_ray.data.features.base import FRAME_RATE
from indextts_ray.data.manifest import Rejection
from indextts_ray.data.metadata import MetadataScan, reject_row
from indextts_ray.data.pairing import (
    REJECT_REASONS,
    column_codes,
    hash_column,
    hash_columns,
    pair_codes,
    stable_hashes,
)

SPLITS = ("train", "val")


@dataclass
class PairingSummary:
    single_utterance_speakers: list[str] = field(default_factory=list)
    other_emotion_prompts: int = 0
    explicit_prompts: int = 0
    self_prompts: int = 0


@dataclass
class ShardPlan:
    split: str
    index: int
    table: pa.Table = field(repr=False)  # every planned row (the shard's rows are taken from it when needed)
    row_indices: np.ndarray = field(repr=False)  # the shard's rows in `table`, in shard order
    est_bytes: int

    @property
    def rows(self) -> pa.Table:
        """Metadata + prompt candidate columns (as `pair_table` adds them) of the shard's rows, in order."""
        rows = self.table.take(pa.array(self.row_indices))
        return expand_prompt_rows(rows, self.table) if "prompt_rows" in rows.column_names else rows

    @property
    def name(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.parquet"

    @property
    def receipt_name(self) -> str:
        return f"receipts/{self.split}-{self.index:05d}.json"

    def ipc_bytes(self) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.rows.schema) as w:
            w.write_table(self.rows)
        return sink.getvalue().to_pybytes()

    def key(self, fingerprint: str) -> str:
        """Changes when the run's fingerprint or anything about this shard's rows changes."""
        return hashlib.sha256(fingerprint.encode() + self.ipc_bytes()).hexdigest()


def table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def pair_table(scan: MetadataScan, cfg: DataConfig) -> PairingSummary:
    """Add `prompt_ids`, `prompt_paths`, `prompt_durations` (candidates in order) to `scan.table`.

    Rows with their own `prompt_audio_path` keep it and get no candidates; rows that cannot be paired move
    to `scan.rejected`. `pair_rows` gives the same pairs in far less memory.
    """
    summary = pair_rows(scan, cfg)
    scan.table = expand_prompt_rows(scan.table, scan.table)
    return summary


def pair_rows(scan: MetadataScan, cfg: DataConfig) -> PairingSummary:
    """`pair_table` with each row's candidates as `prompt_rows` (their row numbers in the new `scan.table`).

    A few bytes per row instead of every candidate's id, path and duration; `ShardPlan.rows` turns them into
    the `pair_table` columns, so the shards are the same. The new table's columns are one chunk each (so a
    shard's rows are taken quickly); it is built a column at a time so that only one column is held twice.
    """
    t = scan.table
    n = t.num_rows
    explicit = pc.is_valid(t.column("prompt_audio_path")).to_numpy(zero_copy_only=False).astype(bool)
    speakers, speaker_names = column_codes(t.column("speaker"))
    emotions, _ = column_codes(pc.fill_null(t.column("emotion"), ""))
    p = pair_codes(hash_column(t.column("id"), cfg.prompt.seed), speakers, emotions, cfg.prompt)
    summary = PairingSummary(sorted(speaker_names.take(pa.array(np.unique(speakers[p.singles]))).to_pylist()),
                             p.other_emotion_prompts, explicit_prompts=int(explicit.sum()))
    del speakers, emotions
    drop = (p.reason > 0) & ~explicit
    dropped = np.flatnonzero(drop)
    if dropped.size:
        for i, r in zip(dropped.tolist(), t.select(["source", "line", "id", "speaker", "emotion"])
                        .take(pa.array(dropped)).to_pylist()):
            reason = REJECT_REASONS[p.reason[i]]
            scan.rejected.append(reject_row(r["source"], r["line"], r["id"], Rejection(reason, _pair_detail(reason, r))))
    keep = ~drop
    # a rejected row is never another row's candidate: rejection means its group had nobody else
    cand = p.candidates
    valid = (cand >= 0) & keep[np.maximum(cand, 0)] & ~explicit[:, None]
    only = np.where(valid, cand, -1).max(axis=1, initial=-1)
    summary.self_prompts = int(((valid.sum(axis=1) == 1) & (only == np.arange(n))).sum())
    del only, p

    new_row = np.cumsum(keep) - 1  # row number after the filter (kept rows only)
    valid = valid[keep]
    offsets = pa.array(np.r_[0, np.cumsum(valid.sum(axis=1))], type=pa.int32())
    index_type = pa.int32() if n < 2**31 else pa.int64()
    flat = pa.array(new_row[cand[keep][valid]], type=index_type)  # row-major: each row's candidates in order
    del t, cand, valid
    prompt_rows = pa.ListArray.from_arrays(offsets, flat)
    scan.table = _filter_one_chunk(scan, None if keep.all() else pa.array(keep), {"prompt_rows": prompt_rows})
    return summary


def expand_prompt_rows(rows: pa.Table, table: pa.Table) -> pa.Table:
    """`rows` (taken from `table`, after `pair_rows`) with `prompt_rows` replaced by the candidates' ids,
    paths and durations: the `pair_table` columns."""
    lists = rows.column("prompt_rows").combine_chunks()
    flat = lists.flatten()
    offsets = pc.subtract(lists.offsets, lists.offsets[0])  # a taken slice may not start at 0
    cols = {name: pa.ListArray.from_arrays(offsets, table.column(source).take(flat).combine_chunks())
            for name, source in (("prompt_ids", "id"), ("prompt_paths", "audio_path"),
                                 ("prompt_durations", "duration"))}
    rows = rows.drop_columns(["prompt_rows"])
    for name, col in cols.items():
        rows = rows.append_column(name, col)
    return rows


def _filter_one_chunk(scan: MetadataScan, mask: pa.Array | None, extra: dict[str, pa.Array]) -> pa.Table:
    """`scan.table` filtered by `mask`, every column one chunk, plus the `extra` columns (already filtered).

    The old table is released a column at a time (the caller must hold no other reference to it).
    """
    t, scan.table = scan.table, None
    columns, names = [], t.column_names
    for name in names:
        col = t.column(name).combine_chunks()
        t = t.drop_columns([name])  # the old chunks go as soon as nothing else holds them
        columns.append(col if mask is None else col.filter(mask))
    return pa.table(columns + list(extra.values()), names=names + list(extra))


def _pair_detail(reason: str, row: dict) -> str:
    speaker = row["speaker"]
    if reason == "no_same_emotion_prompt":
        return f"speaker {speaker!r} has no other {row['emotion'] or 'unlabelled'} utterance"
    return f"speaker {speaker!r} has no other usable utterance"


def split_rows(ids: list[str], speakers: list[str], cfg: SplitConfig) -> np.ndarray:
    """Boolean array: True = validation row. Hash of the id, or of the speaker to hold out whole speakers."""
    return stable_hashes(ids if cfg.by == "id" else speakers, f"split{cfg.seed}") < _split_threshold(cfg)


def _split_threshold(cfg: SplitConfig) -> np.uint64:
    # hash < val_fraction * 2**64 (a float) compared exactly in integers: hash < ceil(threshold)
    return np.uint64(math.ceil(cfg.val_fraction * 2.0**64))


def _split_and_order(table: pa.Table, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """(`split_rows` of a table, each row's "order" hash); a speaker split hashes each speaker once."""
    if cfg.by == "id":
        split_key, order_key = hash_columns(table.column("id"), [f"split{cfg.seed}", "order"])
        return split_key < _split_threshold(cfg), order_key
    codes, names = column_codes(table.column("speaker"))
    return (hash_column(names, f"split{cfg.seed}") < _split_threshold(cfg))[codes], hash_column(table.column("id"), "order")


def estimate_row_bytes(t: pa.Table, cfg: DataConfig, feat_dim: int) -> np.ndarray:
    """Rough bytes per output row, from metadata only (codes, text ids, float16 prompt/emotion features)."""
    dur = t.column("duration").to_numpy()
    if "prompt_rows" in t.column_names:  # after `pair_rows`: the first candidate's duration
        first = _first_or(t.column("prompt_rows"), -1).astype(np.int64)
        first_prompt = np.where(first >= 0, dur[np.maximum(first, 0)], cfg.prompt.max_seconds)
    else:
        first_prompt = _first_or(t.column("prompt_durations"), cfg.prompt.max_seconds)
    prompt_s = np.minimum(first_prompt, cfg.prompt.max_seconds)
    emo_s = np.where(pc.is_valid(t.column("emotion_audio_path")).to_numpy(zero_copy_only=False),
                     cfg.prompt.max_seconds, 0.0)
    n_text = t.column("n_text").to_numpy()
    frames = FRAME_RATE * (prompt_s + emo_s)
    return (4 * FRAME_RATE * dur + 4 * n_text + 2 * feat_dim * frames + 256).astype(np.int64)


def _first_or(lists: pa.ChunkedArray, default: float) -> np.ndarray:
    """The first element of each list (as float64), or `default` for an empty list."""
    parts = []
    for chunk in lists.chunks:
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy(zero_copy_only=False).astype(np.float64)
        has = offsets[1:] > offsets[:-1]
        first = np.full(len(chunk), default, dtype=np.float64)
        first[has] = values[offsets[:-1][has]]
        parts.append(first)
    return np.concatenate(parts) if parts else np.zeros(0)


def plan_shards(table: pa.Table, cfg: DataConfig, feat_dim: int) -> list[ShardPlan]:
    """Cut each split into shards of at most `shard_rows` rows and about `shard_mb` MiB (estimated)."""
    is_val, order_key = _split_and_order(table, cfg.split)
    est = estimate_row_bytes(table, cfg, feat_dim)
    budget = cfg.shard_mb * 2**20
    plans: list[ShardPlan] = []
    for split, mask in (("train", ~is_val), ("val", is_val)):
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(order_key[rows], kind="stable")]  # mixes speakers across shards
        size = np.r_[0, np.cumsum(est[rows])]  # size[j] = bytes of rows[:j]
        start, index = 0, 0
        while start < len(rows):
            # a shard ends before the row that would make it exceed `budget` (it always takes one row),
            # or at `shard_rows`
            over = int(np.searchsorted(size, size[start] + budget, side="right")) - 1
            end = min(start + cfg.shard_rows, max(over, start + 1), len(rows))
            plans.append(ShardPlan(split, index, table, rows[start:end], int(size[end] - size[start])))
            start, index = end, index + 1
    return plans
