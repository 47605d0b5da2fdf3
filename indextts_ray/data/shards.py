"""Audio stage, one shard at a time: decode, check, featurise, write the shard file and its receipt.

A shard is the unit of work and of resume:

    shard rows --audio--> codes (extractor, or precomputed codes_path) + the utterance's own features (float16)
               --prompt_audio_path / emotion_audio_path (optional)--> their features, in the same row
               --> <split>/shard-NNNNN.arrow (temp file + rename)  --> receipts/<split>-NNNNN.json (same)

Features are stored once per utterance (`data.features.mode: stored`), or not at all (`streaming`: empty
blobs, the features are still computed here for `n_frames` and the codes); which utterance prompts which
target is drawn at training time (`data/prompts.py`). The receipt is written after the shard is in place, so a receipt always describes a
complete shard; a run killed in between leaves a shard without receipt, which the next run rewrites. Rows
rejected here (audio problems) are listed in the receipt, so a resumed run still accounts for every row.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from indextts_ray import storage
from indextts_ray.data.audio import load_checked
from indextts_ray.data.config import DataConfig
from indextts_ray.data.features.base import Extractor, build_extractor
from indextts_ray.data.manifest import Rejection
from indextts_ray.data.metadata import reject_row
from indextts_ray.data.plan import table_from_ipc
from indextts_ray.data.schema import AUDIO_COLUMNS, SCHEMA_VERSION, UTTERANCE_SCHEMA, encode_feats
from indextts_ray.data.store import SHARD_SUFFIX, write_shard_file
from indextts_ray.errors import DataError
from indextts_ray.io_utils import sha256_file

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
        self.extractor = build_extractor(ctx.data.features, _local_dir(ctx.feature_dir))
        check_extractor(self.extractor, ctx)

    def __call__(self, item: dict) -> dict:
        receipt = write_shard(table_from_ipc(item["rows"]), item["split"], int(item["index"]), item["key"],
                              self.extractor, self.ctx)
        return {"receipt": json.dumps(receipt)}


def _local_dir(loc: str) -> str:
    """Extractors read their work dir by path: a store's folder is copied here (an empty folder when absent)."""
    if not storage.is_remote(loc):
        return loc
    return str(storage.cached_copy(loc)) if storage.listdir(loc) else tempfile.mkdtemp(prefix="indextts-features-")


def check_extractor(ex: Extractor, ctx: ShardContext) -> None:
    if ex.dim != ctx.expected_dim:
        raise DataError(f"features.kind {ctx.data.features.kind} gives {ex.dim}-dim features but the model "
                        f"expects model.input_dim {ctx.expected_dim}; make them equal")
    if ex.codebook_size > ctx.max_codes:
        raise DataError(f"features.kind {ctx.data.features.kind} has {ex.codebook_size} codes but the model's "
                        f"start_mel_token is {ctx.max_codes}; codes must stay below it")


def write_shard(rows: pa.Table, split: str, index: int, key: str, ex: Extractor, ctx: ShardContext) -> dict:
    """Build the shard's rows, write the Parquet file and the receipt atomically; return the receipt."""
    table, rejected, stats = build_rows(rows, ex, ctx)
    name = f"{split}/shard-{index:05d}{SHARD_SUFFIX}"
    receipt: dict = {"key": key, "split": split, "index": index, "schema_version": SCHEMA_VERSION,
                     "rows_planned": rows.num_rows, "rows": table.num_rows, "file": None, "bytes": 0,
                     "sha256": None, "rejected": rejected, "stats": stats,
                     "extractor": {"kind": ctx.data.features.kind, "mode": ctx.data.features.mode, "dim": ex.dim,
                                   "codebook_size": ex.codebook_size, "frame_rate": ex.frame_rate}}
    if table.num_rows:
        def write(tmp: str) -> None:  # size and hash of the finished temp file: no read-back from a store
            write_shard_file(table, tmp)
            receipt.update(file=name, bytes=os.path.getsize(tmp), sha256=sha256_file(tmp))

        storage.atomic_write(storage.join(ctx.out_dir, name), write)
    storage.write_json(storage.join(ctx.out_dir, "receipts", f"{split}-{index:05d}.json"), receipt)
    return receipt


def build_rows(rows: pa.Table, ex: Extractor, ctx: ShardContext) -> tuple[pa.Table, list[dict], dict]:
    """Process a shard's planned rows; returns (output table, rejected rows, shard statistics)."""
    out: dict[str, list] = {name: [] for name in UTTERANCE_SCHEMA.names}
    rejected: list[dict] = []
    counts: Counter = Counter()
    per = {"speaker": Counter(), "emotion": Counter(), "language": Counter()}
    dur_hist = np.zeros(len(DURATION_BINS), dtype=np.int64)
    code_hist = np.zeros(ex.codebook_size, dtype=np.int64)
    seconds = 0.0
    # streaming: empty blobs, not null, so the ingest's crops run unchanged and give the frame windows the
    # stream then computes from the audio (null keeps meaning "no such file")
    blob = (lambda f: b"") if ctx.data.features.mode == "streaming" else encode_feats
    for r in rows.to_pylist():
        got = _process_row(r, ex, ctx, counts)
        if isinstance(got, Rejection):
            rejected.append(reject_row(r["source"], r["line"], r["id"], got))
            continue
        codes, feats, prompt, emo, tgt = got
        for name in ("id", "speaker", "language", "emotion", "emotion_id", "text", "text_norm", "text_ids", "n_text"):
            out[name].append(r[name])
        out["codes"].append(codes)
        out["n_codes"].append(len(codes))
        out["duration"].append(tgt.duration)
        out["feats"].append(blob(feats))
        out["n_frames"].append(feats.shape[0])
        out["feat_dim"].append(feats.shape[1])
        out["prompt_feats"].append(None if prompt is None else blob(prompt))
        out["prompt_frames"].append(0 if prompt is None else prompt.shape[0])
        counts["explicit_prompts"] += prompt is not None
        out["emo_feats"].append(None if emo is None else blob(emo))
        out["emo_frames"].append(0 if emo is None else emo.shape[0])
        for name in AUDIO_COLUMNS:  # absolute (resolved by the metadata scan): the stream reads them again
            out[name].append(r[name])
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
    return pa.Table.from_pydict(out, schema=UTTERANCE_SCHEMA), rejected, stats


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
    feats = ex.features(tgt.wav16k)
    if feats.shape[0] == 0:
        return Rejection("too_short", f"{tgt.duration:.3f} s gives no feature frame")
    prompt = reference_features(r, "prompt_audio_path", cfg, ex)
    if isinstance(prompt, Rejection):
        return prompt
    emo = reference_features(r, "emotion_audio_path", cfg, ex)
    if isinstance(emo, Rejection):
        return emo
    return codes, feats, prompt, emo, tgt


def reference_features(r: dict, field: str, cfg: DataConfig, ex: Extractor) -> np.ndarray | Rejection | None:
    """Features of the row's explicit prompt or emotion reference (`field`), cut to `prompt.max_seconds`; None
    when the row names none. A bad reference rejects the row as `bad_prompt_audio`, naming the field."""
    if not r[field]:
        return None
    a = load_checked(r[field], cfg, max_seconds=cfg.prompt.max_seconds, check_length=False)
    if isinstance(a, Rejection):
        return Rejection("bad_prompt_audio", f"{field}: {a.code}: {a.detail}")
    feats = ex.features(a.wav16k)
    if feats.shape[0] == 0:
        return Rejection("bad_prompt_audio", f"{field} gives no feature frame")
    return feats


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
