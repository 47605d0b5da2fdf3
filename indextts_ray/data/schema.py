"""The row schemas of the prepared set (`UTTERANCE_SCHEMA`, stored) and of training batches (`BATCH_SCHEMA`).

A stored row is one accepted utterance, its features kept once (whatever it is used for):

    id, speaker, language, emotion, emotion_id      who/what (emotion_id = index in model.emotion_labels, -1 none)
    text, text_norm, text_ids, n_text               text as given, normalised, BPE ids (no start/stop)
    codes, n_codes, duration                        semantic codes at 50 Hz (no start/stop), seconds
    feats, n_frames, feat_dim                       the utterance's own conditioning features, float16
                                                    row-major (n_frames, feat_dim) bytes; empty in
                                                    `data.features.mode: streaming` (computed from the audio
                                                    in the training stream, `data/stream_features.py`)
    prompt_feats, prompt_frames                     features of the row's own `prompt_audio_path`; null / 0 =
                                                    a prompt is drawn from the speaker's other utterances
                                                    (empty blob + frames: streaming, computed from the file)
    emo_feats, emo_frames                           features of `emotion_audio_path`; null / 0 = none (empty
                                                    blob: streaming)
    audio_path, prompt_audio_path,                  the absolute files `prepare` decoded (whole file; the two
    emotion_audio_path                              clips cut to `data.prompt.max_seconds`); null = none

Prompts are not stored: the ingest draws one per target and epoch (`data/prompts.py`) and joins its
features in the stream. A batch row (what the fetch stage emits and `collate` reads) is one (prompt,
target) example: the target's columns plus `prompt_id`, `prompt_emotion_id` and the prompt's cropped
`prompt_feats`/`prompt_frames` (and `entry`, the plan index of its micro-batch); `emo_feats` holds the
emotion reference when it is not the prompt (`train.emotion_reference`, or the row's `emotion_audio_path`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
FEATS_DTYPE = np.float16
_META = {b"indextts_ray.schema_version": str(SCHEMA_VERSION).encode()}

_TARGET_FIELDS = [
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
]
_EMO_FIELDS = [pa.field("emo_feats", pa.binary(), nullable=True), pa.field("emo_frames", pa.int32(), nullable=False)]

UTTERANCE_SCHEMA = pa.schema(
    [
        *_TARGET_FIELDS,
        pa.field("feats", pa.binary(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("feat_dim", pa.int32(), nullable=False),
        pa.field("prompt_feats", pa.binary(), nullable=True),
        pa.field("prompt_frames", pa.int32(), nullable=False),
        *_EMO_FIELDS,
        # what streaming mode recomputes features from (added within schema 2: folders prepared before have no
        # such columns and are stored-mode; `RowStore.take` reads only the columns it is asked for)
        pa.field("audio_path", pa.string(), nullable=True),
        pa.field("prompt_audio_path", pa.string(), nullable=True),
        pa.field("emotion_audio_path", pa.string(), nullable=True),
    ],
    metadata=_META,
)
AUDIO_COLUMNS = ["audio_path", "prompt_audio_path", "emotion_audio_path"]

BATCH_SCHEMA = pa.schema(
    [
        pa.field("entry", pa.int64(), nullable=False),
        pa.field("dataset", pa.int32(), nullable=False),
        *_TARGET_FIELDS,
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt_emotion_id", pa.int16(), nullable=False),
        pa.field("prompt_feats", pa.binary(), nullable=False),
        pa.field("prompt_frames", pa.int32(), nullable=False),
        pa.field("feat_dim", pa.int32(), nullable=False),
        *_EMO_FIELDS,
        # emotion label of the clip in emo_feats (the target's own with train.emotion_reference=target*; -1 for
        # an emotion_audio_path file, whose emotion is unknown)
        pa.field("emo_emotion_id", pa.int16(), nullable=False),
    ],
    metadata=_META,
)

# the training stream's unit between its stages: one row per micro-batch (plan entry), its batch rows as Arrow IPC
# bytes, so Ray Data moves whole micro-batches as single-row blocks (`ingest.rank_dataset`)
PACKED_SCHEMA = pa.schema([pa.field("entry", pa.int64(), nullable=False),
                           pa.field("batch", pa.large_binary(), nullable=False)])

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # manifest file
        pa.field("line", pa.int64(), nullable=False),  # 1-based line in that file
        pa.field("id", pa.string(), nullable=True),  # null when the line could not be parsed
        pa.field("reason", pa.string(), nullable=False),  # stable short code (validate.REASONS)
        pa.field("detail", pa.string(), nullable=False),
    ],
    metadata=_META,
)


def encode_feats(feats: np.ndarray) -> bytes:
    """(frames, dim) float array -> float16 row-major bytes, the layout of every `*feats` column."""
    if feats.ndim != 2:
        raise ValueError(f"features must be (frames, dim), got shape {feats.shape}")
    return np.ascontiguousarray(feats, dtype=FEATS_DTYPE).tobytes()


def decode_feats(data: bytes, frames: int, dim: int) -> np.ndarray:
    """`*feats` bytes -> float16 array (frames, dim); raises if the size does not match."""
    arr = np.frombuffer(data, dtype=FEATS_DTYPE)
    if arr.size != frames * dim:
        raise ValueError(f"feature blob has {arr.size} values, expected frames {frames} x dim {dim}")
    return arr.reshape(frames, dim)


def schema_version_of(path) -> int:
    """Schema version stored in a shard's metadata."""
    from indextts_ray.data.store import read_schema

    meta = read_schema(path).metadata or {}
    raw = meta.get(b"indextts_ray.schema_version")
    if raw is None:
        raise ValueError(f"{path}: no indextts_ray.schema_version in the shard's metadata")
    return int(raw)


def pack_batches(tables: list[pa.Table]) -> pa.Table:
    """Micro-batches (each one plan entry's rows) -> `PACKED_SCHEMA` rows, one per micro-batch."""
    blobs = []
    for t in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        blobs.append(sink.getvalue().to_pybytes())
    entries = [int(t.column("entry")[0].as_py()) for t in tables]
    return pa.table({"entry": pa.array(entries, pa.int64()), "batch": pa.array(blobs, pa.large_binary())},
                    schema=PACKED_SCHEMA)


def unpack_batches(packed: pa.Table) -> list[pa.Table]:
    """`PACKED_SCHEMA` rows -> their micro-batches (zero-copy reads of the IPC bytes)."""
    return [pa.ipc.open_stream(blob.as_buffer()).read_all() for blob in packed.column("batch")]
