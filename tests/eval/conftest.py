from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from indextts_ray.config import load_config
from indextts_ray.data.schema import UTTERANCE_SCHEMA
from indextts_ray.data.store import write_shard_file
from indextts_ray.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg() -> ModelConfig:
    return load_config(REPO / "configs" / "model" / "tiny.yaml", schema=ModelConfig)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU spinning OpenMP threads make
    every op much slower; run on one thread and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- an emotional code corpus

S, E = 3, 7  # speakers, emotions of `write_emotion_dataset`


def clip_feats(speaker: int, emotion: int, seed: int, dim: int = 32) -> np.ndarray:
    """A clip's features: its speaker's mean in the first half of the dims, its emotion's in the second, + noise;
    10-15 frames (float16). Apart, neither label drowns the other while a tiny model learns both."""
    means = np.random.default_rng(7)
    half = dim // 2
    spk_mean = np.pad(3 * means.normal(0, 1, (S, half)), ((0, 0), (0, dim - half)))
    emo_mean = np.pad(3 * means.normal(0, 1, (E, dim - half)), ((0, 0), (half, 0)))
    r = np.random.default_rng(seed)
    frames = int(r.integers(10, 16))
    return (spk_mean[speaker] + emo_mean[emotion] + 0.3 * r.normal(0, 1, (frames, dim))).astype(np.float16)


def write_emotion_dataset(root: Path, per_cell: tuple[int, int] = (4, 2)) -> Path:
    """Prepared shards whose codes carry emotion and speaker the way the synthetic corpus's carry prosody and
    timbre, but trivially: each text piece t gives the codes (t % 40, 40 + emotion, 48 + speaker).

    `per_cell` = rows per (speaker, emotion) in train and val. Texts come from a set of 12 shared by every
    speaker and emotion, and a row's speaker prompt is drawn by the ingest among its speaker's utterances (any emotion);
    its emotion reference (`emo_feats`) has its own emotion. So a model trained on it can only learn the emotion
    from the emotion path (not by memorising which text went with which emotion).
    """
    labels = tiny_cfg().emotion_labels
    texts = [np.random.default_rng(100 + k).integers(2, 200, 2 + k % 4) for k in range(12)]
    for split, n, seed in (("train", per_cell[0], 0), ("val", per_cell[1], 1)):
        rng = np.random.default_rng(seed)
        cells = [(s, e) for s in range(S) for e in range(E) for _ in range(n)]
        ids = [f"{split}-{i:04d}" for i in range(len(cells))]
        feats = [clip_feats(s, e, 1000 * seed + i) for i, (s, e) in enumerate(cells)]
        rows = []
        for i, (s, e) in enumerate(cells):
            t = texts[int(rng.integers(len(texts)))]
            codes = np.stack([t % 40, np.full_like(t, 40 + e), np.full_like(t, 48 + s)], 1).reshape(-1)
            _ = rng.choice([j for j, c in enumerate(cells) if c[0] == s and j != i])  # keeps the RNG stream
            r = int(rng.choice([j for j, c in enumerate(cells) if c == (s, e) and j != i]))
            rows.append({"id": ids[i], "speaker": f"spk{s}", "language": "en", "emotion": labels[e], "emotion_id": e,
                         "text": "x", "text_norm": "x", "text_ids": t.tolist(), "n_text": len(t), "codes": codes.tolist(),
                         "n_codes": len(codes), "duration": len(codes) / 50, "feats": feats[i].tobytes(),
                         "n_frames": len(feats[i]), "feat_dim": 32, "prompt_feats": None, "prompt_frames": 0,
                         "emo_feats": feats[r].tobytes(), "emo_frames": len(feats[r])})
        (root / split).mkdir(parents=True, exist_ok=True)
        write_shard_file(pa.Table.from_pylist(rows, schema=UTTERANCE_SCHEMA), root / split / "shard-00000.arrow")
    return root
