"""From validated metadata to a fixed shard plan: prompt candidates, train/val split, shard membership.

The plan is a pure function of the accepted rows and the config, fixed before any audio is decoded, so a
rerun rebuilds exactly the shards it did not finish, and two runs write the same shards.

    accepted rows --pair_table--> prompt candidates (ids, paths, durations)   (+ pairing rejections)
                  --split_rows--> train / val by hash of id (or speaker)
                  --plan_shards--> per split, rows in hash order, cut at shard_rows or ~shard_mb
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.config import DataConfig, SplitConfig
from indextts_ray.data.features.base import FRAME_RATE
from indextts_ray.data.manifest import Rejection
from indextts_ray.data.metadata import MetadataScan, reject_row
from indextts_ray.data.pairing import pair_prompts, stable_hash

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
    rows: pa.Table  # metadata + prompt candidate columns of the shard's rows, in order
    est_bytes: int

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
    to `scan.rejected`.
    """
    t = scan.table
    ids = t.column("id").to_pylist()
    explicit = np.asarray(pc.is_valid(t.column("prompt_audio_path")).to_numpy(zero_copy_only=False))
    pairing = pair_prompts(ids, t.column("speaker").to_pylist(), t.column("emotion").to_pylist(), cfg.prompt)
    paths = t.column("audio_path").to_pylist()
    durations = t.column("duration").to_numpy()
    keep = np.ones(len(ids), dtype=bool)
    summary = PairingSummary(pairing.single_utterance_speakers, pairing.other_emotion_prompts,
                             explicit_prompts=int(explicit.sum()))
    for i, reason in enumerate(pairing.reject):
        if reason is not None and not explicit[i]:
            keep[i] = False
            src, line = t.column("source")[i].as_py(), t.column("line")[i].as_py()
            scan.rejected.append(reject_row(src, line, ids[i], Rejection(reason, _pair_detail(reason, t, i))))
    cand_ids, cand_paths, cand_durs = [], [], []
    for i in range(len(ids)):
        # a rejected row is never another row's candidate: rejection means its group had nobody else
        cs = [] if explicit[i] else [int(c) for c in pairing.candidates[i] if c >= 0 and keep[c]]
        summary.self_prompts += int(cs == [i])
        cand_ids.append([ids[c] for c in cs])
        cand_paths.append([paths[c] for c in cs])
        cand_durs.append([float(durations[c]) for c in cs])
    t = t.append_column("prompt_ids", pa.array(cand_ids, type=pa.list_(pa.string())))
    t = t.append_column("prompt_paths", pa.array(cand_paths, type=pa.list_(pa.string())))
    t = t.append_column("prompt_durations", pa.array(cand_durs, type=pa.list_(pa.float64())))
    scan.table = t.filter(pa.array(keep))
    return summary


def _pair_detail(reason: str, t: pa.Table, i: int) -> str:
    speaker = t.column("speaker")[i].as_py()
    if reason == "no_same_emotion_prompt":
        return f"speaker {speaker!r} has no other {t.column('emotion')[i].as_py() or 'unlabelled'} utterance"
    return f"speaker {speaker!r} has no other usable utterance"


def split_rows(ids: list[str], speakers: list[str], cfg: SplitConfig) -> np.ndarray:
    """Boolean array: True = validation row. Hash of the id, or of the speaker to hold out whole speakers."""
    keys = ids if cfg.by == "id" else speakers
    threshold = cfg.val_fraction * 2.0**64
    return np.fromiter((stable_hash(k, f"split{cfg.seed}") < threshold for k in keys), dtype=bool, count=len(keys))


def estimate_row_bytes(t: pa.Table, cfg: DataConfig, feat_dim: int) -> np.ndarray:
    """Rough bytes per output row, from metadata only (codes, text ids, float16 prompt/emotion features)."""
    dur = t.column("duration").to_numpy()
    first_prompt = np.array([d[0] if d else cfg.prompt.max_seconds for d in t.column("prompt_durations").to_pylist()])
    prompt_s = np.minimum(first_prompt, cfg.prompt.max_seconds)
    emo_s = np.where(pc.is_valid(t.column("emotion_audio_path")).to_numpy(zero_copy_only=False),
                     cfg.prompt.max_seconds, 0.0)
    n_text = t.column("n_text").to_numpy()
    frames = FRAME_RATE * (prompt_s + emo_s)
    return (4 * FRAME_RATE * dur + 4 * n_text + 2 * feat_dim * frames + 256).astype(np.int64)


def plan_shards(table: pa.Table, cfg: DataConfig, feat_dim: int) -> list[ShardPlan]:
    """Cut each split into shards of at most `shard_rows` rows and about `shard_mb` MiB (estimated)."""
    ids = table.column("id").to_pylist()
    is_val = split_rows(ids, table.column("speaker").to_pylist(), cfg.split)
    order_key = np.array([stable_hash(i, "order") for i in ids], dtype=np.uint64)
    est = estimate_row_bytes(table, cfg, feat_dim)
    budget = cfg.shard_mb * 2**20
    plans: list[ShardPlan] = []
    for split, mask in (("train", ~is_val), ("val", is_val)):
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(order_key[rows], kind="stable")]  # mixes speakers across shards
        start, size, index = 0, 0, 0
        for j, r in enumerate(rows):
            if j > start and (j - start >= cfg.shard_rows or size + est[r] > budget):
                plans.append(ShardPlan(split, index, table.take(rows[start:j]), int(size)))
                start, size, index = j, 0, index + 1
            size += est[r]
        if len(rows) > start:
            plans.append(ShardPlan(split, index, table.take(rows[start:]), int(size)))
    return plans
