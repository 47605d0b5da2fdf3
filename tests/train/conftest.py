"""Tiny prepared datasets written straight in the shard schema, so training tests need no audio work."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

FEAT_DIM = 32


def make_rows(n: int, n_speakers: int, seed: int, prefix: str) -> pa.Table:
    """Codes are a fixed function of the text (2 codes per token), so the tiny model can learn text -> codes."""
    rng = np.random.default_rng(seed)
    spk_means = np.random.default_rng(99).normal(0, 1, (n_speakers, FEAT_DIM))
    rows = {k: [] for k in ("id", "speaker", "language", "emotion", "emotion_id", "text", "text_norm", "text_ids",
                            "n_text", "codes", "n_codes", "duration", "prompt_id", "prompt_feats", "prompt_frames",
                            "feat_dim", "emo_feats", "emo_frames")}
    for i in range(n):
        spk = i % n_speakers
        t = rng.integers(2, 200, rng.integers(3, 12)).astype(np.int32)
        codes = np.stack([(t * 7) % 64, (t * 13 + spk) % 64], 1).reshape(-1).astype(np.int32)
        frames = int(rng.integers(20, 40))
        feats = (spk_means[spk] + 0.3 * rng.normal(0, 1, (frames, FEAT_DIM))).astype(np.float16)
        emo = int(rng.integers(0, 7))
        for k, v in (("id", f"{prefix}{i:05d}"), ("speaker", f"spk{spk}"), ("language", "ko"), ("emotion", None),
                     ("emotion_id", emo), ("text", "x"), ("text_norm", "x"), ("text_ids", t.tolist()),
                     ("n_text", len(t)), ("codes", codes.tolist()), ("n_codes", len(codes)),
                     ("duration", len(codes) / 50), ("prompt_id", f"{prefix}{(i + n_speakers) % n:05d}"),
                     ("prompt_feats", feats.tobytes()), ("prompt_frames", frames), ("feat_dim", FEAT_DIM),
                     ("emo_feats", None), ("emo_frames", 0)):
            rows[k].append(v)
    return pa.table({
        **{k: pa.array(rows[k], pa.string()) for k in ("id", "speaker", "language", "emotion", "text", "text_norm",
                                                       "prompt_id")},
        "emotion_id": pa.array(rows["emotion_id"], pa.int16()),
        "text_ids": pa.array(rows["text_ids"], pa.list_(pa.int32())),
        "n_text": pa.array(rows["n_text"], pa.int32()),
        "codes": pa.array(rows["codes"], pa.list_(pa.int32())),
        "n_codes": pa.array(rows["n_codes"], pa.int32()),
        "duration": pa.array(rows["duration"], pa.float32()),
        "prompt_feats": pa.array(rows["prompt_feats"], pa.binary()),
        "prompt_frames": pa.array(rows["prompt_frames"], pa.int32()),
        "feat_dim": pa.array(rows["feat_dim"], pa.int32()),
        "emo_feats": pa.array(rows["emo_feats"], pa.binary()),
        "emo_frames": pa.array(rows["emo_frames"], pa.int32()),
    })


def write_dataset(root: Path, n_train=96, n_val=16, n_speakers=4, rows_per_shard=40) -> Path:
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        table = make_rows(n, n_speakers, seed, prefix=f"{split}-")
        (root / split).mkdir(parents=True, exist_ok=True)
        for s, start in enumerate(range(0, n, rows_per_shard)):
            pq.write_table(table.slice(start, rows_per_shard), root / split / f"shard-{s:05d}.parquet", row_group_size=16)
    mapping = {"format_version": 1, "mapping": {f"spk{i}": i for i in range(n_speakers)}, "counts": {}}
    (root / "speaker_mapping.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("prepared"))
