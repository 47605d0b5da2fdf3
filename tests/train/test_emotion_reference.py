"""`train.emotion_reference`: which audio the emotion conditioner hears in training, batch by batch (exact arrays).

    prompt       the speaker prompt's crop (no `emo_feats`; the emotion vector comes from `spk_feats`)
    target       the target's own features (first max_frames frames), labelled with the target's emotion
    target_crop  a window of half the target (at most max_frames), placed per (seed, epoch, target)
An `emotion_audio_path` file of a row wins over every choice (its emotion unknown: label ignored).
"""

import numpy as np
import pyarrow as pa
import pytest

from indextts_ray.data.bucketing import BucketingSettings
from indextts_ray.data.config import PromptConfig
from indextts_ray.data.ingest import make_spec, prompted_rows
from indextts_ray.data.prompts import row_hash
from indextts_ray.data.store import write_shard_file
from indextts_ray.train.collate import IGNORE, collate
from tests.train.conftest import FEAT_DIM, make_rows

N, SPEAKERS = 12, 3
FILE_ROW = 5  # this row has its own emotion_audio_path features


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoref")
    for split, n, seed in (("train", N, 0), ("val", 4, 1)):
        rows = make_rows(n, SPEAKERS, seed, prefix=f"{split}-").to_pylist()
        if split == "train":
            file = np.full((7, FEAT_DIM), 0.5, np.float16)
            rows[FILE_ROW] |= {"emo_feats": file.tobytes(), "emo_frames": 7}
        (root / split).mkdir(parents=True)
        write_shard_file(pa.Table.from_pylist(rows, schema=make_rows(1, 1, 0, "x").schema),
                         root / split / "shard-00000.arrow")
    return root


def batch(data, mode: str, epoch: int = 0, max_seconds: float = 0.5):
    """All train targets of `epoch` (row order) as the ingest serves them, collated; max 25 frames per clip."""
    spec = make_spec([str(data)], seed=3, bucketing=BucketingSettings(1 << 30, 1 << 30, 1),
                     prompt=PromptConfig(max_seconds=max_seconds), emotion_reference=mode)
    rows = prompted_rows(spec, "train", epoch)
    return rows, collate(rows)


def own_feats(rows: pa.Table, data, k: int) -> np.ndarray:
    store = make_rows(N, SPEAKERS, 0, prefix="train-")
    i = store.column("id").to_pylist().index(rows.column("id")[k].as_py())
    n = store.column("n_frames")[i].as_py()
    return np.frombuffer(store.column("feats")[i].as_py(), np.float16).reshape(n, FEAT_DIM)


def test_prompt_the_emotion_vector_hears_the_speaker_prompt(data):
    rows, b = batch(data, "prompt")
    assert rows.num_rows == N and "emo_feats" in b  # only because FILE_ROW has its own file
    assert b["emo_lengths"].tolist() == [7 if k == FILE_ROW else f for k, f in
                                          enumerate(rows.column("prompt_frames").to_pylist())]
    for k in range(N):
        if k != FILE_ROW:
            assert np.array_equal(b["emo_feats"][k].numpy(), b["spk_feats"][k].numpy())  # the prompt, padded alike
    prompt_emotion = rows.column("prompt_emotion_id").to_pylist()
    assert b["emotion_ids"].tolist() == [IGNORE if k == FILE_ROW else e for k, e in enumerate(prompt_emotion)]


def test_target_the_emotion_vector_hears_the_target_itself(data):
    rows, b = batch(data, "target", max_seconds=100.0)
    targets = rows.column("emotion_id").to_pylist()
    assert b["emotion_ids"].tolist() == [IGNORE if k == FILE_ROW else e for k, e in enumerate(targets)]
    for k in range(N):
        if k == FILE_ROW:
            assert b["emo_lengths"][k] == 7 and np.all(b["emo_feats"][k, :7].numpy() == np.float16(0.5))
            continue
        own = own_feats(rows, data, k)
        assert b["emo_lengths"][k] == len(own)  # 20-39 frames, all of them
        assert np.array_equal(b["emo_feats"][k, : len(own)].numpy(), own)
    # cut to the prompt length like any clip (0.5 s = 25 frames)
    rows, b = batch(data, "target")
    assert b["emo_lengths"].tolist() == [7 if k == FILE_ROW else min(25, len(own_feats(rows, data, k)))
                                         for k in range(N)]
    assert np.array_equal(b["emo_feats"][0, :25].numpy(), own_feats(rows, data, 0)[:25])


def test_target_crop_is_a_seeded_window_of_half_the_target(data):
    rows, b = batch(data, "target_crop")
    ids = rows.column("id").to_pylist()
    plan_rows = np.array([int(i.split("-")[1]) for i in ids])  # train rows come first: global row = index
    n = np.array([len(own_feats(rows, data, k)) for k in range(N)])
    size = np.minimum(n // 2, 25)
    start = (row_hash(3, 0, plan_rows, 2) % (n - size + 1).astype(np.uint64)).astype(np.int64)
    assert start.tolist() == [12, 18, 17, 16, 11, 6, 15, 11, 7, 5, 1, 16]
    assert size.tolist() == [19, 19, 16, 16, 12, 17, 16, 16, 12, 12, 12, 15]  # half of each target's frames (all < 25)
    for k in range(N):
        if k == FILE_ROW:
            assert b["emo_lengths"][k] == 7
            continue
        assert b["emo_lengths"][k] == size[k]
        assert np.array_equal(b["emo_feats"][k, : size[k]].numpy(), own_feats(rows, data, k)[start[k]: start[k] + size[k]])
    assert b["emotion_ids"].tolist() == [IGNORE if k == FILE_ROW else e
                                         for k, e in enumerate(rows.column("emotion_id").to_pylist())]
    # another epoch, another window; the same epoch, the same window (resume replays it)
    _, again = batch(data, "target_crop")
    _, later = batch(data, "target_crop", epoch=1)
    assert np.array_equal(again["emo_feats"].numpy(), b["emo_feats"].numpy())
    assert not np.array_equal(later["emo_feats"].numpy(), b["emo_feats"].numpy())


def test_unknown_choice_is_refused(data):
    with pytest.raises(ValueError, match="emotion_reference must be one of prompt, target, target_crop"):
        batch(data, "same_emotion")


def test_stage2_config_defaults_to_target_crop_and_reaches_the_ingest(data):
    from indextts_ray.config import load_config
    from indextts_ray.errors import ConfigError
    from indextts_ray.train.trainer import ingest_spec
    from tests.conftest import REPO

    stage2 = load_config(REPO / "configs/demo/stage2.yaml", [f"train.data_dir={data}", "train.only_mapped_speakers=false"])
    assert stage2.train.emotion_reference == "target_crop"  # inherited from configs/stage2.yaml
    assert ingest_spec(stage2).emotion_reference == "target_crop"
    stage1 = load_config(REPO / "configs/demo/stage1.yaml", [f"train.data_dir={data}"])
    assert stage1.train.emotion_reference == "prompt" and ingest_spec(stage1).emotion_reference == "prompt"
    with pytest.raises(ConfigError, match="emotion_reference"):
        load_config(REPO / "configs/demo/stage1.yaml", ["train.emotion_reference=same_emotion"])
