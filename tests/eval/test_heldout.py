"""Probe clips from whole splits: every stored utterance, its own features and labels, in id order."""

import numpy as np

from indextts_ray.data.store import read_table
from indextts_ray.eval.heldout import split_clips

from .conftest import write_emotion_dataset


def test_split_clips_are_the_stored_utterances(tmp_path):
    data = write_emotion_dataset(tmp_path / "prepared")  # 84 train + 42 val rows, 3 speakers x 7 emotions
    clips = split_clips(data, ("train", "val"), max_clips=1000)
    stored = read_table(data / "train" / "shard-00000.arrow").to_pylist() + \
        read_table(data / "val" / "shard-00000.arrow").to_pylist()
    assert clips.num_rows == 126 and clips.column("prompt_id").to_pylist() == sorted(r["id"] for r in stored)
    by_id = {r["id"]: r for r in stored}
    for c in clips.to_pylist():
        r = by_id[c["prompt_id"]]
        assert (c["speaker"], c["emotion_id"], c["prompt_frames"]) == (r["speaker"], r["emotion_id"], r["n_frames"])
        assert c["prompt_feats"] == r["feats"]  # 10-15 frames: all of them
    assert np.bincount(clips.column("emotion_id").to_numpy()).tolist() == [18] * 7
    val = split_clips(data, ("val",), max_clips=1000)
    assert val.num_rows == 42 and all(i.startswith("val-") for i in val.column("prompt_id").to_pylist())
    sample = split_clips(data, ("train", "val"), max_clips=50, seed=1)
    assert sample.num_rows == 50 and sample.column("prompt_id").to_pylist() == sorted(sample.column("prompt_id").to_pylist())
    assert split_clips(data, ("train", "val"), max_clips=50, seed=1).equals(sample)
    assert not split_clips(data, ("train", "val"), max_clips=50, seed=2).equals(sample)
