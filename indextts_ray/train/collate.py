"""Arrow rows of the shard schema -> padded torch tensors in the `TrainingModel` batch layout."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

IGNORE = -100


def _pad_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised padding of a list<int> column: (B, max_len) int64 zeros-padded, and lengths (B,)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy()
    offsets = offsets - offsets[0]
    values = arr.values.to_numpy()[: offsets[-1]] if len(arr) else np.zeros(0, np.int64)
    lengths = np.diff(offsets)
    out = np.zeros((len(arr), int(lengths.max(initial=0))), dtype=np.int64)
    rows = np.repeat(np.arange(len(arr)), lengths)
    cols = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    out[rows, cols] = values
    return out, lengths


def _pad_feats(blobs: list[bytes | None], frames: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((len(blobs), int(frames.max(initial=0)), dim), dtype=np.float32)
    for i, (b, n) in enumerate(zip(blobs, frames)):
        out[i, :n] = np.frombuffer(b, dtype=np.float16).reshape(n, dim)
    return out


def collate(table: pa.Table, speaker_to_id: dict[str, int] | None = None, emotion_of=None) -> dict:
    """Build the model batch. `emo_feats` is included only when some row has its own emotion reference.

    `emotion_ids` label the clip the emotion vector comes from: the prompt, looked up with `emotion_of`
    (an `EmotionLookup`); without it, or for a separate emotion reference, the label is unknown (ignored).
    """
    text, text_len = _pad_lists(table.column("text_ids"))
    codes, code_len = _pad_lists(table.column("codes"))
    dim = int(table.column("feat_dim")[0].as_py())
    p_frames = table.column("prompt_frames").to_numpy().astype(np.int64)
    prompt_blobs = table.column("prompt_feats").to_pylist()
    batch = {
        "text_ids": torch.from_numpy(text),
        "text_lengths": torch.from_numpy(text_len.astype(np.int64)),
        "codes": torch.from_numpy(codes),
        "code_lengths": torch.from_numpy(code_len.astype(np.int64)),
        "spk_feats": torch.from_numpy(_pad_feats(prompt_blobs, p_frames, dim)),
        "spk_lengths": torch.from_numpy(p_frames),
    }
    emo_blobs = table.column("emo_feats").to_pylist()
    if any(b is not None for b in emo_blobs):
        e_frames = table.column("emo_frames").to_numpy().astype(np.int64)
        blobs = [e if e is not None else p for e, p in zip(emo_blobs, prompt_blobs)]
        frames = np.where([e is not None for e in emo_blobs], e_frames, p_frames)
        batch["emo_feats"] = torch.from_numpy(_pad_feats(blobs, frames, dim))
        batch["emo_lengths"] = torch.from_numpy(frames.astype(np.int64))
    if emotion_of is not None:
        emo = emotion_of(table.column("prompt_id").to_pylist()).astype(np.int64)
        if "emo_feats" in batch:
            emo = np.where(np.asarray([e is None for e in emo_blobs]), emo, -1)
    else:
        emo = np.full(table.num_rows, -1, dtype=np.int64)
    batch["emotion_ids"] = torch.from_numpy(np.where(emo < 0, IGNORE, emo))
    if speaker_to_id is not None:
        spk = [speaker_to_id.get(s, IGNORE) for s in table.column("speaker").to_pylist()]
        batch["speaker_ids"] = torch.tensor(spk, dtype=torch.long)
    return batch


def batch_ids(table: pa.Table) -> list[str]:
    return table.column("id").to_pylist()
