"""Stage 1 with data, checkpoints and export on an S3-compatible server (moto, `tests/conftest.py`): the ingest
reads the shards with ranged GETs, Ray Train writes checkpoints there, a killed run resumes from them, and the
export lands there and loads. Every number is compared with the same run on the local disk."""

import os

import pytest
import torch

from indextts_ray import storage
from indextts_ray.model.checkpoint_io import load_export
from indextts_ray.train.export import export_run, latest_checkpoint
from indextts_ray.train.run_files import checkpoint_files
from indextts_ray.train.tracking import read_metrics
from indextts_ray.train.trainer import run_training
from tests.conftest import new_bucket
from tests.train.test_train_ray import run_killing_rank1, stage_cfg

# 96 rows at 400 tokens -> 6 micro-batches -> 3 steps of 2 ranks per epoch; 2 epochs; a checkpoint every 2 steps
EXTRA = ("train.epochs=2", "train.checkpoint.every_steps=2", "train.eval_every_steps=3", "train.checkpoint.keep=3",
         "train.scaling.max_failures=0")


@pytest.fixture(scope="module")
def local_ref(tiny_dataset, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_training(stage_cfg(1, tiny_dataset, out, "ref", *EXTRA))
    return out / "ref"


def test_stage1_on_s3_resumes_after_a_kill_and_exports(tiny_dataset, local_ref, s3_server, tmp_path):
    bucket = new_bucket(s3_server, "stage1")
    data, runs = storage.join(bucket, "prepared"), storage.join(bucket, "runs")
    storage.upload_dir(tiny_dataset, data)
    cfg = stage_cfg(1, data, runs, "s1", *EXTRA)  # type: ignore[arg-type]  (URIs, not paths)
    run_loc = storage.join(runs, "s1")
    done, _ = run_killing_rank1(cfg, run_loc, 2, timeout=300)
    assert "error" in done, "the run was not interrupted"
    killed_at = int(storage.name(latest_checkpoint(run_loc)).split("-")[1])
    assert killed_at in (2, 3, 4)  # the last registered before the kill (every 2 steps and at the epoch's end, 3)
    assert not storage.is_file(storage.join(run_loc, "finished.json"))

    run_training(cfg)  # the same command again: resumes from the store's last checkpoint

    assert storage.read_json(storage.join(run_loc, "finished.json"))["step"] == 6
    assert storage.name(latest_checkpoint(run_loc)) == "step-00000006"
    assert storage.read_json(storage.join(latest_checkpoint(run_loc), "summary.json"))["progress"]["step"] == 6
    ref, got = read_metrics(local_ref), read_metrics(run_loc)  # metrics.jsonl as uploaded to the store
    assert sorted(s for s in got if "mel_loss" in got[s]) == list(range(1, 7))
    for step in range(1, 7):  # the same batches, read from the store, before and after the resume
        assert got[step]["mel_loss"] == pytest.approx(ref[step]["mel_loss"], rel=1e-6), step
    assert got[6]["val_loss"] == pytest.approx(ref[6]["val_loss"], rel=1e-6)
    assert storage.glob(storage.join(run_loc, "tensorboard"), "events.*", recursive=True)
    assert run_training(cfg) is None  # finished.json on the store matches: nothing to do

    out = storage.join(bucket, "export")
    export_run(run_loc, out)
    assert {"gpt.pth", "config.yaml"} <= set(storage.listdir(out))
    with storage.local_copy(out) as here:
        loaded = load_export(here, device="cpu").state_dict()
    expected = load_export(export_run(local_ref, tmp_path / "ref-export"), device="cpu").state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_two_readers_of_a_checkpoint_on_a_store_do_not_overwrite_each_others_files(s3_server, tmp_path):
    """Ray's `as_directory` shares one download folder per checkpoint on a node and a later reader downloads again
    into it, truncating the file a first reader is loading; each reader gets a folder of its own."""
    from ray.train import Checkpoint

    src = tmp_path / "step-00000002"
    src.mkdir()
    (src / "state.pt").write_bytes(os.urandom(1 << 16))
    loc = storage.join(new_bucket(s3_server, "readers"), "run", "step-00000002")
    storage.upload_dir(src, loc)
    fs, path = storage.resolve(loc)
    ckpt = Checkpoint(path=path, filesystem=fs)
    with checkpoint_files(ckpt) as first:
        stamp = (first / "state.pt").stat().st_mtime_ns, (first / "state.pt").stat().st_ino
        with checkpoint_files(ckpt) as second:  # a second rank arriving while the first still reads
            assert second != first and (second / "state.pt").read_bytes() == (src / "state.pt").read_bytes()
        assert ((first / "state.pt").stat().st_mtime_ns, (first / "state.pt").stat().st_ino) == stamp
        assert (first / "state.pt").read_bytes() == (src / "state.pt").read_bytes()
    assert not first.exists() and not second.exists()
    with checkpoint_files(Checkpoint.from_directory(str(src))) as local:  # a local checkpoint is read in place
        assert local == src

