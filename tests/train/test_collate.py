import numpy as np
import torch

from indextts_ray.train.collate import IGNORE, collate
from tests.train.conftest import FEAT_DIM, make_rows


def test_collate_pads_and_maps():
    table = make_rows(5, 2, seed=0, prefix="r")
    b = collate(table, {"spk0": 0})
    lens = table.column("n_text").to_numpy()
    assert b["text_ids"].shape == (5, lens.max()) and b["text_lengths"].tolist() == lens.tolist()
    first = np.asarray(table.column("text_ids")[0].as_py())
    assert b["text_ids"][0, : len(first)].tolist() == first.tolist()
    assert (b["text_ids"][0, len(first):] == 0).all()
    frames = table.column("prompt_frames").to_numpy()
    assert b["spk_feats"].shape == (5, frames.max(), FEAT_DIM)
    raw = np.frombuffer(table.column("prompt_feats")[1].as_py(), np.float16).reshape(frames[1], FEAT_DIM)
    assert torch.equal(b["spk_feats"][1, : frames[1]], torch.from_numpy(raw.astype(np.float32)))
    assert b["speaker_ids"].tolist() == [0, IGNORE, 0, IGNORE, 0]
    assert "emo_feats" not in b


def test_emotion_label_is_the_prompts(tmp_path):
    import pyarrow.parquet as pq

    from indextts_ray.train.shards import EmotionLookup

    table = make_rows(6, 2, seed=0, prefix="r")
    pq.write_table(table, tmp_path / "shard-00000.parquet")
    lookup = EmotionLookup([tmp_path / "shard-00000.parquet"])
    emo = dict(zip(table.column("id").to_pylist(), table.column("emotion_id").to_pylist()))
    b = collate(table, None, lookup)
    expected = [emo.get(p, IGNORE) for p in table.column("prompt_id").to_pylist()]
    assert b["emotion_ids"].tolist() == expected
    assert lookup(["nope"]).tolist() == [-1]
    assert collate(table)["emotion_ids"].tolist() == [IGNORE] * 6  # no lookup: unknown, never the target's
