"""Audio stage, one shard at a time: decode, check, featurise, write the Parquet shard and its receipt.

A shard is the unit of work and of resume:

    shard rows --target audio--> codes (extractor, or precomputed codes_path)
               --prompt: first candidate whose audio passes the checks--> prompt features (float16)
               --emotion_audio_path (optional)--> emotion features
               --> <split>/shard-NNNNN.parquet (temp file + rename)  --> receipts/<split>-NNNNN.json (same)

The receipt is written after the shard is in place, so a receipt always describes a complete shard; a run
killed in between leaves a shard without receipt, which the next run rewrites. Rows rejected here (audio
problems, no valid prompt) are listed in the receipt, so a resumed run still accounts for every row.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indextts_ray.data.audio import LoadedAudio, load_checked
from indextts_ray.data.config import DataConfig
from indextts_ray.data.features.base import Extractor, build_extractor
from indextts_ray.data.manifest import Rejection
from indextts_ray.data.metadata import reject_row
from indextts_ray.data.plan import table_from_ipc
from indextts_ray.data.schema import SCHEMA_VERSION, SHARD_SCHEMA, encode_feats
from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write, atomic_write_json, sha256_file

ROW_GROUP_ROWS = 256  # bounds a row group to ~256 prompts' features
DURATION_BINS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40]  # seconds; last bin is open-ended


@dataclass
class ShardContext:
    """Everything a worker needs (picklable; paths absolute)."""

    data: DataConfig
    out_dir: str
    feature_dir: str
    fingerprint: str
    max_mel_tokens: int
    expected_dim: int
    max_codes: int  # codes must be < model.start_mel_token


class ShardWorker:
    """Ray Data callable: builds the extractor once per worker process, then writes one shard per item."""

    def __init__(self, ctx: ShardContext):
        self.ctx = ctx
        self.extractor = build_extractor(ctx.data.features, ctx.feature_dir)
        check_extractor(self.extractor, ctx)

    def __call__(self, item: dict) -> dict:
        receipt = write_shard(table_from_ipc(item["rows"]), item["split"], int(item["index"]), item["key"],
                              self.extractor, self.ctx)
        return {"receipt": json.dumps(receipt)}


def read_shards(files: list[Path], blocks: int | None = None, num_cpus: float | None = None):
    """A Ray Data dataset over prepared shard files (Ray must be initialised): one pyarrow read per file in
    `map_batches` tasks. Iterate it with `prefetch_batches` > 1.

    Not `ray.data.read_parquet`: planning it starts remote work that asks for whole CPUs (V1 samples files in
    1-CPU tasks, V2 reads every footer on a pool of 32 actors, ~45 s before the first batch of 1,677 shards
    on 2 CPUs). Inside training, where the workers hold fractions of every CPU, a two-trial PBT search on 2
    CPUs waited forever for the sampling task. Here nothing runs before iteration, and every task asks for
    `num_cpus`.

    Args:
        files: shard paths (duplicates are dropped, so every row is read once).
        blocks: read tasks; default 4 per CPU of the cluster (at most one per file).
        num_cpus: CPU per read task (Ray's default 1); training asks for a fraction.
    """
    import ray

    paths = [str(f) for f in dict.fromkeys(files)]
    n = blocks or 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    names = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, min(n, len(paths))))
    extra = {} if num_cpus is None else {"num_cpus": num_cpus}
    # batch_size=1: one shard per call, so an output block is one shard (bounded), never a task's whole list
    return names.map_batches(_read_shard_files, batch_size=1, batch_format="pyarrow", zero_copy_batch=True, **extra)


def _read_shard_files(batch: pa.Table) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in batch.column("path").to_pylist()])


def check_extractor(ex: Extractor, ctx: ShardContext) -> None:
    if ex.dim != ctx.expected_dim:
        raise DataError(f"features.kind {ctx.data.features.kind} gives {ex.dim}-dim features but the model "
                        f"expects model.input_dim {ctx.expected_dim}; make them equal")
    if ex.codebook_size > ctx.max_codes:
        raise DataError(f"features.kind {ctx.data.features.kind} has {ex.codebook_size} codes but the model's "
                        f"start_mel_token is {ctx.max_codes}; codes must stay below it")


def write_shard(rows: pa.Table, split: str, index: int, key: str, ex: Extractor, ctx: ShardContext) -> dict:
    """Build the shard's rows, write the Parquet file and the receipt atomically; return the receipt."""
    out_dir = Path(ctx.out_dir)
    table, rejected, stats = build_rows(rows, ex, ctx)
    name = f"{split}/shard-{index:05d}.parquet"
    receipt: dict = {"key": key, "split": split, "index": index, "schema_version": SCHEMA_VERSION,
                     "rows_planned": rows.num_rows, "rows": table.num_rows, "file": None, "bytes": 0,
                     "sha256": None, "rejected": rejected, "stats": stats,
                     "extractor": {"kind": ctx.data.features.kind, "dim": ex.dim, "codebook_size": ex.codebook_size,
                                   "frame_rate": ex.frame_rate}}
    if table.num_rows:
        path = out_dir / name
        atomic_write(path, lambda tmp: write_parquet(table, tmp))
        receipt.update(file=name, bytes=path.stat().st_size, sha256=sha256_file(path))
    atomic_write_json(out_dir / "receipts" / f"{split}-{index:05d}.json", receipt)
    return receipt


def write_parquet(table: pa.Table, path: str) -> None:
    # no statistics on the feature blobs: min/max of binary columns is useless and large
    stats_cols = [f.name for f in table.schema if not pa.types.is_binary(f.type)]
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=stats_cols)


def build_rows(rows: pa.Table, ex: Extractor, ctx: ShardContext) -> tuple[pa.Table, list[dict], dict]:
    """Process a shard's planned rows; returns (output table, rejected rows, shard statistics)."""
    out: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    rejected: list[dict] = []
    counts: Counter = Counter()
    per = {"speaker": Counter(), "emotion": Counter(), "language": Counter()}
    dur_hist = np.zeros(len(DURATION_BINS), dtype=np.int64)
    code_hist = np.zeros(ex.codebook_size, dtype=np.int64)
    seconds = 0.0
    for r in rows.to_pylist():
        got = _process_row(r, ex, ctx, counts)
        if isinstance(got, Rejection):
            rejected.append(reject_row(r["source"], r["line"], r["id"], got))
            continue
        codes, prompt_id, prompt, emo, tgt = got
        out["id"].append(r["id"])
        out["speaker"].append(r["speaker"])
        out["language"].append(r["language"])
        out["emotion"].append(r["emotion"])
        out["emotion_id"].append(r["emotion_id"])
        out["text"].append(r["text"])
        out["text_norm"].append(r["text_norm"])
        out["text_ids"].append(r["text_ids"])
        out["n_text"].append(r["n_text"])
        out["codes"].append(codes)
        out["n_codes"].append(len(codes))
        out["duration"].append(tgt.duration)
        out["prompt_id"].append(prompt_id)
        out["prompt_feats"].append(encode_feats(prompt))
        out["prompt_frames"].append(prompt.shape[0])
        out["feat_dim"].append(prompt.shape[1])
        out["emo_feats"].append(None if emo is None else encode_feats(emo))
        out["emo_frames"].append(0 if emo is None else emo.shape[0])
        counts["resampled"] += tgt.resampled
        counts["downmixed"] += tgt.downmixed
        counts["text_normalised"] += r["text"] != r["text_norm"]
        per["speaker"][r["speaker"]] += 1
        per["emotion"][r["emotion"] or "none"] += 1
        per["language"][r["language"]] += 1
        dur_hist[np.searchsorted(DURATION_BINS, tgt.duration, side="right") - 1] += 1
        code_hist += np.bincount(codes, minlength=ex.codebook_size)
        seconds += tgt.duration
    stats = {"seconds": seconds, "counts": dict(counts), **{k: dict(v) for k, v in per.items()},
             "duration_hist": dur_hist.tolist(), "code_hist": code_hist.tolist()}
    return pa.Table.from_pydict(out, schema=SHARD_SCHEMA), rejected, stats


def _process_row(r: dict, ex: Extractor, ctx: ShardContext, counts: Counter):
    cfg = ctx.data
    tgt = load_checked(r["audio_path"], cfg, declared_duration=r["duration"] if r["declared_duration"] else None)
    if isinstance(tgt, Rejection):
        return tgt
    if r["codes_path"]:
        codes = load_codes(r["codes_path"], tgt.duration, ex)
        if isinstance(codes, Rejection):
            return codes
        counts["precomputed_codes"] += 1
    else:
        codes = np.asarray(ex.codes(tgt.wav16k), dtype=np.int32)
        if codes.size and (codes.min() < 0 or codes.max() >= ex.codebook_size):
            raise RuntimeError(f"extractor {cfg.features.kind} returned codes outside [0, {ex.codebook_size})")
    if len(codes) > ctx.max_mel_tokens:
        return Rejection("too_many_codes", f"{len(codes)} codes > model.max_mel_tokens {ctx.max_mel_tokens}")
    if len(codes) == 0:
        return Rejection("too_short", f"{tgt.duration:.3f} s gives no 50 Hz frame")
    max_samples = int(cfg.prompt.max_seconds * cfg.feature_sample_rate)

    prompt_id, prompt_wav = None, None
    if r["prompt_audio_path"]:
        p = load_checked(r["prompt_audio_path"], cfg, max_seconds=cfg.prompt.max_seconds, check_length=False)
        if isinstance(p, Rejection):
            return Rejection("bad_prompt_audio", f"prompt_audio_path: {p.code}: {p.detail}")
        prompt_id, prompt_wav = "@" + r["prompt_audio_path"], p.wav16k
    else:
        failures = []
        for cid, cpath, cdur in zip(r["prompt_ids"], r["prompt_paths"], r["prompt_durations"]):
            # a candidate is used only if it would pass the same checks as a target
            p = tgt if cid == r["id"] else load_checked(cpath, cfg, declared_duration=cdur)
            if isinstance(p, LoadedAudio):
                prompt_id, prompt_wav = cid, p.wav16k[:max_samples]
                break
            failures.append(f"{cid}: {p.code}")
            counts["prompt_fallbacks"] += 1
        if prompt_wav is None:
            return Rejection("no_valid_prompt", "candidates rejected: " + ", ".join(failures) if failures
                             else "no prompt candidates")
    prompt = ex.features(prompt_wav)
    if prompt.shape[0] == 0:
        return Rejection("bad_prompt_audio", f"prompt {prompt_id} gives no feature frame")

    emo = None
    if r["emotion_audio_path"]:
        e = load_checked(r["emotion_audio_path"], cfg, max_seconds=cfg.prompt.max_seconds, check_length=False)
        if isinstance(e, Rejection):
            return Rejection("bad_prompt_audio", f"emotion_audio_path: {e.code}: {e.detail}")
        emo = ex.features(e.wav16k)
        if emo.shape[0] == 0:
            return Rejection("bad_prompt_audio", "emotion_audio_path gives no feature frame")
    return codes, prompt_id, prompt, emo, tgt


def load_codes(path: str, duration: float, ex: Extractor) -> np.ndarray | Rejection:
    """Precomputed 50 Hz codes (`.npy`, (T,) or (1, T) integers), checked against range and duration."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        return Rejection("bad_codes", f"{path}: cannot load ({e})")
    arr = arr.squeeze(0) if arr.ndim == 2 and arr.shape[0] == 1 else arr
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        return Rejection("bad_codes", f"{path}: expected 1-D integer codes, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= ex.codebook_size):
        return Rejection("bad_codes", f"{path}: codes outside [0, {ex.codebook_size})")
    expected = ex.frame_rate * duration
    if abs(arr.size - expected) > 2 + 0.01 * expected:  # w2v-BERT gives ceil(n/2) frames ≈ 50/s
        return Rejection("bad_codes", f"{path}: {arr.size} codes for {duration:.2f} s (expected ~{expected:.0f})")
    return arr.astype(np.int32)
