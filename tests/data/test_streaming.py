"""`data.features.mode: streaming`: prepare stores no features and the training stream computes them from the
audio on extractor actors; the batches equal stored mode's for the same seed (ids, prompts, crops, values)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indextts_ray.commands.prepare_cmd import load_prepare_config
from indextts_ray.data.bucketing import BucketingSettings
from indextts_ray.data.config import PromptConfig
from indextts_ray.data.features.builtin import CODEBOOK_FILE
from indextts_ray.data.idle_backoff import IdleBackoff
from indextts_ray.data.ingest import (
    _ENTRY_SCHEMA,
    CorpusIndex,
    fetch_entries,
    make_spec,
    micro_batches,
    plan_split,
    planner_actor,
    prompted_rows,
    rank_dataset,
    release_planner,
)
from indextts_ray.data.prepare import prepare_dataset
from indextts_ray.data.store import RowStore, read_table
from indextts_ray.data.stream_features import REQUEST_COLUMNS, StreamFeatures, stream_settings
from indextts_ray.errors import ConfigError, DataError
from tests.data.tiny_corpus import make_good_corpus, tone, write_wav

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs/data/demo.yaml")
FEATURE_COLUMNS = ("feats", "prompt_feats", "emo_feats")
BATCH_FEATURES = ("prompt_feats", "emo_feats")
MAX_SECONDS = 1.0  # drawn prompts are 50-frame crops of 1.3-3 s utterances: real crops at varied starts


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """The same corpus (3 speakers x 6 utterances + one row with its own prompt and emotion files) prepared in
    both modes, in this process (data.workers=0)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = make_good_corpus(root)
    for k, (name, seconds) in enumerate((("x_own", 2.0), ("x_prompt", 1.6), ("x_emotion", 2.5))):
        write_wav(root / "wavs" / "own" / f"{name}.wav", tone(seconds, seed=k))
    rows.append({"id": "x_own", "audio_path": "wavs/own/x_own.wav", "text": "hello there", "speaker": rows[0]["speaker"],
                 "language": "en", "duration": 2.0, "prompt_audio_path": "wavs/own/x_prompt.wav",
                 "emotion_audio_path": "wavs/own/x_emotion.wav", "emotion": "happy"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for mode in ("stored", "streaming"):
        out[mode] = tmp_path_factory.mktemp(mode) / "data"
        if mode == "streaming":  # the same k-means codebook (fitting it again gives the same one, slower)
            (out[mode] / "features").mkdir(parents=True)
            shutil.copy(out["stored"] / "features" / CODEBOOK_FILE, out[mode] / "features" / CODEBOOK_FILE)
        cfg = load_prepare_config(DEMO, [f"data.root={root}", "data.manifest=manifest.jsonl",
                                         f"data.output_dir={out[mode]}", "data.workers=0", "data.shard_rows=8",
                                         "data.split.val_fraction=0.25", "data.features.kmeans_sample_frames=4000",
                                         f"data.prompt.max_seconds={MAX_SECONDS}", f"data.features.mode={mode}"], "tiny")
        prepare_dataset(cfg)
    return out


def _rows(out: Path) -> list[dict]:
    return [r for f in sorted(out.glob("*/shard-*.arrow")) for r in read_table(f).to_pylist()]


def spec(data: Path, emotion_reference: str = "prompt", run_key: str = ""):
    return make_spec([str(data)], seed=7, bucketing=BucketingSettings(400, 8, 64),
                     prompt=PromptConfig(max_seconds=MAX_SECONDS), emotion_reference=emotion_reference,
                     run_key=run_key, feature_actor_cpus=0.25)


def assert_same_batch(stored: pa.Table, streamed: pa.Table) -> None:
    """Every column equal; feature blobs equal as float16 values (the same computation: bit-equal here)."""
    assert streamed.schema.equals(stored.schema) and streamed.num_rows == stored.num_rows > 0
    for name in stored.column_names:
        a, b = stored.column(name).to_pylist(), streamed.column(name).to_pylist()
        if name not in BATCH_FEATURES:
            assert a == b, name
            continue
        assert [x is None for x in a] == [x is None for x in b], name
        for x, y in zip(a, b):
            if x is not None:
                assert len(x) == len(y) > 0, name
                np.testing.assert_allclose(np.frombuffer(y, np.float16), np.frombuffer(x, np.float16), rtol=0,
                                           atol=1e-3)


def test_streaming_prepare_keeps_the_rows_but_no_features(prepared):
    stored, streamed = _rows(prepared["stored"]), _rows(prepared["streaming"])
    assert len(stored) == len(streamed) == 19
    for a, b in zip(stored, streamed):
        assert {k: v for k, v in a.items() if k not in FEATURE_COLUMNS} == \
               {k: v for k, v in b.items() if k not in FEATURE_COLUMNS}  # codes, n_frames, paths, ... the same
        assert b["feats"] == b"" and len(a["feats"]) == 2 * 32 * a["n_frames"] > 0
        assert Path(b["audio_path"]).is_absolute() and Path(b["audio_path"]).is_file()
    own = next(r for r in streamed if r["id"] == "x_own")
    assert (own["prompt_feats"], own["emo_feats"]) == (b"", b"")  # to compute from the files, cut at max_seconds
    assert (own["prompt_frames"], own["emo_frames"]) == (50, 50)
    assert own["prompt_audio_path"].endswith("wavs/own/x_prompt.wav")
    meta = {m: json.loads((prepared[m] / "dataset.json").read_text()) for m in prepared}
    assert [meta[m]["features"]["mode"] for m in ("stored", "streaming")] == ["stored", "streaming"]
    assert meta["streaming"]["features"]["extractor"]["kind"] == "builtin"
    assert meta["streaming"]["features"]["clip_seconds"] == MAX_SECONDS
    assert json.loads((prepared["streaming"] / "stats.json").read_text())["features"]["mode"] == "streaming"
    assert meta["stored"]["fingerprint"] != meta["streaming"]["fingerprint"]
    size = {m: sum(f.stat().st_size for f in prepared[m].glob("*/shard-*.arrow")) for m in prepared}
    feature_bytes = sum(len(r[c] or b"") for r in stored for c in FEATURE_COLUMNS)
    assert size["stored"] - size["streaming"] >= feature_bytes > 19 * 32 * 2 * 50


@pytest.mark.parametrize("emotion_reference", ["prompt", "target_crop"])
@pytest.mark.parametrize("split,epoch", [("train", 0), ("train", 1), ("val", 0)])
def test_streamed_rows_equal_stored_rows(prepared, emotion_reference, split, epoch):
    """In-process path (eval, and each actor's computation): every target with its prompt crop."""
    a, b = spec(prepared["stored"], emotion_reference), spec(prepared["streaming"], emotion_reference)
    assert a.stream is None and b.stream is not None
    assert_same_batch(prompted_rows(a, split, epoch), prompted_rows(b, split, epoch))


def test_the_plan_really_crops_and_uses_own_files(prepared):
    """What the equality above covers: crops at many starts and lengths, own prompt/emotion files."""
    s = spec(prepared["streaming"], "target_crop")
    plan = plan_split(CorpusIndex(s), s, "train", 0)
    assert (plan.crop > 0).sum() >= 8 and len(set(plan.crop.tolist())) >= 8
    rows = prompted_rows(s, "train", 0)
    frames = rows.column("prompt_frames").to_numpy()
    assert (frames == 50).sum() >= 8  # full-length crops of longer utterances
    own = rows.filter(pa.compute.equal(rows.column("id"), "x_own"))
    assert own.column("prompt_id").to_pylist() == ["@x_own"] and own.column("emo_frames").to_pylist() == [50]
    assert rows.column("emo_feats").null_count == 0  # target_crop: every row has an emotion clip


def test_ray_stream_with_extractor_actors_gives_the_stored_batches(prepared, ray_local):
    """Through Ray Data as training reads it (entries -> fetch tasks -> extractor actor pool -> micro-batches),
    against the stored set's plan entries fetched in this process."""
    import ray

    a, b = spec(prepared["stored"], "target_crop"), spec(prepared["streaming"], "target_crop", run_key="stream-test")
    plan = plan_split(CorpusIndex(a), a, "train", 1)
    store = RowStore([Path(f) for f in a.files], np.asarray(a.counts))
    stored = [fetch_entries(pa.Table.from_pylist([{**plan.entry(j), "epoch": 1}], schema=_ENTRY_SCHEMA), store,
                            a.max_prompt_frames, "target_crop", a.seed) for j in range(len(plan.batches))]
    planner = planner_actor(b)
    try:
        ray.get(planner.set_cursor.remote("train", 0, 1, list(range(len(plan.batches)))))
        ds = rank_dataset(b, "train", 0)
        streamed = list(micro_batches(ds.iterator()))
    finally:
        release_planner(b)
    assert ds.context.custom_execution_callback_classes == [IdleBackoff]  # no busy loop while training computes
    assert len(streamed) == len(stored) >= 3
    for x, y in zip(stored, streamed):
        assert_same_batch(x, y)


def _requests(prepared) -> tuple[pa.Table, object]:
    """One fetched entry of the streaming set before the actor stage (batch rows + request columns), its spec."""
    s = spec(prepared["streaming"])
    plan = plan_split(CorpusIndex(s), s, "train", 0)
    entry = {**plan.entry(0), "epoch": 0}
    store = RowStore([Path(f) for f in s.files], np.asarray(s.counts))
    return fetch_entries(pa.Table.from_pylist([entry], schema=_ENTRY_SCHEMA), store, s.max_prompt_frames,
                         "prompt", s.seed, s.stream.clip_seconds), s


def test_changed_or_missing_audio_is_an_error_not_other_features(prepared, tmp_path):
    batch, s = _requests(prepared)
    assert set(REQUEST_COLUMNS) <= set(batch.column_names)
    actor = StreamFeatures(s.stream)
    assert actor.fill(batch).num_rows == batch.num_rows  # as fetched: fine
    total = batch.column("_prompt_total").to_numpy().copy()
    total[0] += 1
    with pytest.raises(DataError, match="changed since prepare"):
        actor.fill(batch.set_column(batch.schema.get_field_index("_prompt_total"), "_prompt_total", pa.array(total)))
    paths = batch.column("_prompt_path").to_pylist()
    paths[0] = str(tmp_path / "gone.wav")
    with pytest.raises(DataError, match="cannot read .*gone.wav.*paths prepare used"):
        actor.fill(batch.set_column(batch.schema.get_field_index("_prompt_path"), "_prompt_path", pa.array(paths)))


def test_mixed_modes_and_bad_keys_are_refused(prepared):
    with pytest.raises(DataError, match="mixes data.features.mode stored and streaming"):
        stream_settings([str(prepared["stored"]), str(prepared["streaming"])])
    with pytest.raises(ConfigError, match="features.mode"):
        load_prepare_config(DEMO, ["data.features.mode=lazy"], "tiny")
    from indextts_ray.config import load_config

    with pytest.raises(ConfigError, match="feature_actor_gpus 0.5 needs use_gpu"):
        load_config(REPO / "configs/demo/stage1.yaml", ["train.scaling.feature_actor_gpus=0.5"])


def test_whole_split_probe_clips_need_stored_features(prepared):
    from indextts_ray.eval.heldout import split_clips

    assert split_clips(prepared["stored"], ("val",), 10).num_rows > 0
    with pytest.raises(DataError, match="mode streaming"):
        split_clips(prepared["streaming"], ("val",), 10)


def test_training_streams_features_through_the_dataset_shard(prepared, ray_local, tmp_path):
    """A tiny Stage-1 run (1 worker, 3 steps, validation at step 3) on the streaming set: `get_dataset_shard`
    hands the loop batches whose features the extractor actors computed."""
    from indextts_ray.config import load_config
    from indextts_ray.train.tracking import read_metrics
    from indextts_ray.train.trainer import run_training

    cfg = load_config(REPO / "configs/demo/stage1.yaml", [
        f"train.data_dir={prepared['streaming']}", f"run.output_dir={tmp_path}", "run.name=stream",
        "train.max_steps=3", "train.eval_every_steps=3", "train.checkpoint.every_steps=3", "train.warmup_steps=1",
        "train.batch.max_tokens=400", "train.scaling.num_workers=1", "train.scaling.feature_actor_cpus=0.25",
        f"data.prompt.max_seconds={MAX_SECONDS}", "train.logging.every_steps=1", "train.logging.wandb=false"])
    run_training(cfg)
    m = read_metrics(tmp_path / "stream")
    steps = sorted(s for s in m if "mel_loss" in m[s])
    assert steps == [1, 2, 3]
    assert all(np.isfinite(m[s]["mel_loss"]) and m[s]["mel_loss"] > 0 for s in steps)
    assert np.isfinite(m[3]["val_loss"])
