"""Batch rows (`schema.BATCH_SCHEMA`, from the ingest stream) -> padded torch tensors in the `TrainingModel`
layout. Features stay float16 on the host (half the bytes to pin and copy); `to_device` makes them fp32
on the device."""

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
    values = arr.flatten().to_numpy() if len(arr) else np.zeros(0, np.int64)  # flatten honours a slice's offset
    lengths = np.diff(offsets)
    out = np.zeros((len(arr), int(lengths.max(initial=0))), dtype=np.int64)
    rows = np.repeat(np.arange(len(arr)), lengths)
    cols = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    out[rows, cols] = values
    return out, lengths


def _pad_feats(blobs: list[bytes | None], frames: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((len(blobs), int(frames.max(initial=0)), dim), dtype=np.float16)
    for i, (b, n) in enumerate(zip(blobs, frames)):
        out[i, :n] = np.frombuffer(b, dtype=np.float16).reshape(n, dim)
    return out


def collate(table: pa.Table, speaker_to_id: dict[str, int] | None = None) -> dict:
    """Build the model batch. `emo_feats` is included only when some row has its own emotion reference.

    Which audio the emotion conditioner hears (`train.emotion_reference`, filled in by the ingest):
    `prompt` = the speaker prompt's features (the batch has no `emo_feats`), `target` / `target_crop` = the
    target's own features / a window of them (in `emo_feats`); a row's `emotion_audio_path` file always wins.
    `emotion_ids` label that clip: the prompt's emotion (`prompt_emotion_id`) or the emotion reference's
    (`emo_emotion_id`: the target's, -1 for a file); unknown ones are ignored by the emotion losses.
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
    has_emo = np.asarray([e is not None for e in emo_blobs], dtype=bool)
    if has_emo.any():
        e_frames = table.column("emo_frames").to_numpy().astype(np.int64)
        blobs = [e if e is not None else p for e, p in zip(emo_blobs, prompt_blobs)]
        frames = np.where(has_emo, e_frames, p_frames)
        batch["emo_feats"] = torch.from_numpy(_pad_feats(blobs, frames, dim))
        batch["emo_lengths"] = torch.from_numpy(frames.astype(np.int64))
    emo = np.where(has_emo, table.column("emo_emotion_id").to_numpy(), table.column("prompt_emotion_id").to_numpy())
    emo = np.where(emo < 0, IGNORE, emo).astype(np.int64)
    batch["emotion_ids"] = torch.from_numpy(emo)
    if speaker_to_id is not None:
        spk = [speaker_to_id.get(s, IGNORE) for s in table.column("speaker").to_pylist()]
        batch["speaker_ids"] = torch.tensor(spk, dtype=torch.long)
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to the device; float16 host features become float32 there."""
    return {k: (v.to(device, non_blocking=True).float() if v.dtype == torch.float16 else v.to(device, non_blocking=True))
            for k, v in batch.items()}


def batch_ids(table: pa.Table) -> list[str]:
    return table.column("id").to_pylist()


def padding_of(table: pa.Table) -> float:
    """Share of padded GPT positions in this micro-batch (text + codes + start/stop tokens per row)."""
    lengths = table.column("n_text").to_numpy().astype(np.int64) + table.column("n_codes").to_numpy() + 4
    return 1.0 - float(lengths.sum()) / (len(lengths) * int(lengths.max())) if len(lengths) else 0.0
