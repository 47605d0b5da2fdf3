"""From validated metadata to a fixed shard plan: train/val split and shard membership.

The plan is a pure function of the accepted rows and the config, fixed before any audio is decoded, so a
rerun rebuilds exactly the shards it did not finish, and two runs write the same shards.

    accepted rows --split_rows--> train / val by hash of id (or speaker)
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
from indextts_ray.data.pairing import column_codes, hash_column, hash_columns, stable_hashes
from indextts_ray.data.store import SHARD_SUFFIX

SPLITS = ("train", "val")


@dataclass
class ShardPlan:
    split: str
    index: int
    table: pa.Table = field(repr=False)  # every planned row (the shard's rows are taken from it when needed)
    row_indices: np.ndarray = field(repr=False)  # the shard's rows in `table`, in shard order
    est_bytes: int

    @property
    def rows(self) -> pa.Table:
        """Metadata columns of the shard's rows, in order."""
        return self.table.take(pa.array(self.row_indices))

    @property
    def name(self) -> str:
        return f"{self.split}/shard-{self.index:05d}{SHARD_SUFFIX}"

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
    """Rough bytes per output row, from metadata only: codes, text ids, the utterance's float16 features and
    those of its own prompt / emotion reference when it names one."""
    dur = t.column("duration").to_numpy()
    extra_s = sum(np.where(pc.is_valid(t.column(c)).to_numpy(zero_copy_only=False), cfg.prompt.max_seconds, 0.0)
                  for c in ("prompt_audio_path", "emotion_audio_path"))
    n_text = t.column("n_text").to_numpy()
    return (4 * FRAME_RATE * dur + 4 * n_text + 2 * feat_dim * FRAME_RATE * (dur + extra_s) + 256).astype(np.int64)


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
