"""Tiny prepared datasets written straight in the shard schema, so training tests need no audio work."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indextts_ray.data.schema import UTTERANCE_SCHEMA
from indextts_ray.data.store import write_shard_file

FEAT_DIM = 32


def make_rows(n: int, n_speakers: int, seed: int, prefix: str) -> pa.Table:
    """Codes are a fixed function of the text (2 codes per token), so the tiny model can learn text -> codes.
    Each row's own features carry its speaker (a mean per speaker) and its emotion (a shift in one dimension)."""
    rng = np.random.default_rng(seed)
    spk_means = np.random.default_rng(99).normal(0, 1, (n_speakers, FEAT_DIM))
    rows = []
    for i in range(n):
        spk = i % n_speakers
        t = rng.integers(2, 200, rng.integers(3, 12)).astype(np.int32)
        codes = np.stack([(t * 7) % 64, (t * 13 + spk) % 64], 1).reshape(-1).astype(np.int32)
        frames = int(rng.integers(20, 40))
        emo = int(rng.integers(0, 7))
        feats = spk_means[spk] + 0.3 * rng.normal(0, 1, (frames, FEAT_DIM))
        feats[:, emo] += 1.0
        rows.append({"id": f"{prefix}{i:05d}", "speaker": f"spk{spk}", "language": "ko", "emotion": None,
                     "emotion_id": emo, "text": "x", "text_norm": "x", "text_ids": t.tolist(), "n_text": len(t),
                     "codes": codes.tolist(), "n_codes": len(codes), "duration": len(codes) / 50,
                     "feats": feats.astype(np.float16).tobytes(), "n_frames": frames, "feat_dim": FEAT_DIM,
                     "prompt_feats": None, "prompt_frames": 0, "emo_feats": None, "emo_frames": 0})
    return pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA)


def make_batch_rows(n: int, n_speakers: int, seed: int, prefix: str) -> pa.Table:
    """`make_rows` as the ingest serves them (`schema.BATCH_SCHEMA`): row i prompted by row i + n_speakers (the
    same speaker), uncropped."""
    from indextts_ray.data.ingest import PROMPT_COLUMNS, TARGET_COLUMNS, join_prompts

    rows = make_rows(n, n_speakers, seed, prefix)
    prompts = rows.take([(i + n_speakers) % n for i in range(n)])
    return join_prompts(rows.select(TARGET_COLUMNS), prompts.select(PROMPT_COLUMNS), [0] * n, 1 << 30, 0, 0)


def write_dataset(root: Path, n_train=96, n_val=16, n_speakers=4, rows_per_shard=40) -> Path:
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        table = make_rows(n, n_speakers, seed, prefix=f"{split}-")
        (root / split).mkdir(parents=True, exist_ok=True)
        for s, start in enumerate(range(0, n, rows_per_shard)):
            write_shard_file(table.slice(start, rows_per_shard), root / split / f"shard-{s:05d}.arrow")
    mapping = {"format_version": 1, "mapping": {f"spk{i}": i for i in range(n_speakers)}, "counts": {}}
    (root / "speaker_mapping.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("prepared"))
