"""The Parquet row schemas `indextts-ray prepare` writes and the training loop reads.

A shard row is one (prompt, target) training example:

    id, speaker, language, emotion, emotion_id      who/what (emotion_id = index in model.emotion_labels, -1 none)
    text, text_norm, text_ids, n_text               target text as given, normalised, BPE ids (no start/stop)
    codes, n_codes, duration                        target semantic codes at 50 Hz (no start/stop), seconds
    prompt_id, prompt_feats, prompt_frames, feat_dim    speaker prompt: another utterance's features,
                                                        float16 row-major (prompt_frames, feat_dim) bytes
    emo_feats, emo_frames                           emotion prompt, same layout; null / 0 = use the prompt
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
FEATS_DTYPE = np.float16

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("emotion", pa.string(), nullable=True),
        pa.field("emotion_id", pa.int16(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("text_norm", pa.string(), nullable=False),
        pa.field("text_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("n_text", pa.int32(), nullable=False),
        pa.field("codes", pa.list_(pa.int32()), nullable=False),
        pa.field("n_codes", pa.int32(), nullable=False),
        pa.field("duration", pa.float32(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt_feats", pa.binary(), nullable=False),
        pa.field("prompt_frames", pa.int32(), nullable=False),
        pa.field("feat_dim", pa.int32(), nullable=False),
        pa.field("emo_feats", pa.binary(), nullable=True),
        pa.field("emo_frames", pa.int32(), nullable=False),
    ],
    metadata={b"indextts_ray.schema_version": str(SCHEMA_VERSION).encode()},
)

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # manifest file
        pa.field("line", pa.int64(), nullable=False),  # 1-based line in that file
        pa.field("id", pa.string(), nullable=True),  # null when the line could not be parsed
        pa.field("reason", pa.string(), nullable=False),  # stable short code (validate.REASONS)
        pa.field("detail", pa.string(), nullable=False),
    ],
    metadata={b"indextts_ray.schema_version": str(SCHEMA_VERSION).encode()},
)


def encode_feats(feats: np.ndarray) -> bytes:
    """(frames, dim) float array -> float16 row-major bytes, the layout of `prompt_feats`/`emo_feats`."""
    if feats.ndim != 2:
        raise ValueError(f"features must be (frames, dim), got shape {feats.shape}")
    return np.ascontiguousarray(feats, dtype=FEATS_DTYPE).tobytes()


def decode_feats(data: bytes, frames: int, dim: int) -> np.ndarray:
    """`prompt_feats`/`emo_feats` bytes -> float16 array (frames, dim); raises if the size does not match."""
    arr = np.frombuffer(data, dtype=FEATS_DTYPE)
    if arr.size != frames * dim:
        raise ValueError(f"feature blob has {arr.size} values, expected frames {frames} x dim {dim}")
    return arr.reshape(frames, dim)


def schema_version_of(path) -> int:
    """Schema version stored in a shard's Parquet metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"indextts_ray.schema_version")
    if raw is None:
        raise ValueError(f"{path}: no indextts_ray.schema_version in the Parquet metadata")
    return int(raw)
