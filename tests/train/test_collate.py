import numpy as np
import torch

from indextts_ray.data.ingest import PROMPT_COLUMNS, TARGET_COLUMNS, join_prompts
from indextts_ray.train.collate import IGNORE, collate, padding_of, to_device
from tests.train.conftest import FEAT_DIM, make_rows


def batch_rows(n: int, crops=None, max_frames: int = 10_000):
    """Targets of make_rows, each prompted by the row two ahead (the same speaker of 2), as the ingest joins them."""
    rows = make_rows(n, 2, seed=0, prefix="r")
    prompts = rows.take([(i + 2) % n for i in range(n)])
    table = join_prompts(rows.select(TARGET_COLUMNS), prompts.select(PROMPT_COLUMNS), crops or [0] * n, max_frames,
                         entry=7, dataset=0)
    return table, rows, prompts


def test_collate_pads_and_maps():
    table, _, _ = batch_rows(5)
    b = collate(table, {"spk0": 0})
    lens = table.column("n_text").to_numpy()
    assert b["text_ids"].shape == (5, lens.max()) and b["text_lengths"].tolist() == lens.tolist()
    first = np.asarray(table.column("text_ids")[0].as_py())
    assert b["text_ids"][0, : len(first)].tolist() == first.tolist()
    assert (b["text_ids"][0, len(first):] == 0).all()
    frames = table.column("prompt_frames").to_numpy()
    assert b["spk_feats"].shape == (5, frames.max(), FEAT_DIM)
    raw = np.frombuffer(table.column("prompt_feats")[1].as_py(), np.float16).reshape(frames[1], FEAT_DIM)
    assert b["spk_feats"].dtype == torch.float16  # host tensors stay fp16 until the device
    assert torch.equal(to_device(b, torch.device("cpu"))["spk_feats"][1, : frames[1]],
                       torch.from_numpy(raw.astype(np.float32)))
    assert b["speaker_ids"].tolist() == [0, IGNORE, 0, IGNORE, 0]
    assert "emo_feats" not in b
    lengths = table.column("n_text").to_numpy() + table.column("n_codes").to_numpy() + 4
    assert padding_of(table) == 1 - lengths.sum() / (5 * lengths.max())


def test_emotion_label_is_the_prompts():
    table, rows, prompts = batch_rows(6)
    assert table.column("prompt_id").to_pylist() == prompts.column("id").to_pylist()
    assert table.column("speaker").to_pylist() == rows.column("speaker").to_pylist()
    b = collate(table)
    assert b["emotion_ids"].tolist() == prompts.column("emotion_id").to_pylist()  # the prompt's, not the target's
    assert b["emotion_ids"].tolist() != rows.column("emotion_id").to_pylist()


def test_prompt_crop_is_a_window_of_the_stored_features():
    table, _, prompts = batch_rows(4, crops=[0, 3, 5, 0], max_frames=10)
    for k, start in enumerate([0, 3, 5, 0]):
        n = prompts.column("n_frames")[k].as_py()
        own = np.frombuffer(prompts.column("feats")[k].as_py(), np.float16).reshape(n, FEAT_DIM)
        got = np.frombuffer(table.column("prompt_feats")[k].as_py(), np.float16).reshape(-1, FEAT_DIM)
        assert table.column("prompt_frames")[k].as_py() == 10 == len(got)
        assert np.array_equal(got, own[start: start + 10])
    assert table.column("entry").to_pylist() == [7] * 4
