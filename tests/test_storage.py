"""storage.py against a real S3-compatible server (moto, started by the test session) and the local disk."""

import os

import numpy as np
import pyarrow as pa
import pytest

from indextts_ray import storage
from indextts_ray.data.store import (
    BATCH_ROWS_KEY,
    RowStore,
    list_shards,
    read_table,
    row_counts,
    write_shard_file,
)
from indextts_ray.errors import UserError
from tests.train.conftest import make_rows, write_dataset


def test_locations_resolve_and_join(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("rel/x") == str(tmp_path / "rel" / "x")
    assert storage.normalize(f"file://{tmp_path}/a") == str(tmp_path / "a")
    assert storage.join("s3://b/runs/", "stage1", "step-1") == "s3://b/runs/stage1/step-1"  # `//` kept
    assert storage.name("s3://b/runs/stage1/") == "stage1" and storage.parent("s3://b/runs/x") == "s3://b/runs"
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/x") and not storage.is_remote("file:///x")
    fs, path = storage.resolve("s3://bkt/a/b")
    assert path == "bkt/a/b" and fs.type_name == "s3"


def test_bad_locations_name_the_key_and_the_fix():
    with pytest.raises(UserError, match=r"run.output_dir=hdfs://nn/x: unsupported scheme hdfs://; use a local path"):
        storage.check_reachable("hdfs://nn/x", "run.output_dir")
    with pytest.raises(UserError) as e:
        storage.check_reachable("s3://AKIAXXXX:s3cr3t@bucket/x", "data.output_dir")
    assert "data.output_dir: credentials in the URI are refused" in str(e.value)
    assert "s3cr3t" not in str(e.value) and "AKIAXXXX" not in str(e.value)  # never printed


def test_missing_credentials_and_bucket(s3_server, monkeypatch):
    storage._s3.cache_clear()
    for var in storage.CREDENTIAL_VARS + ("AWS_SECRET_ACCESS_KEY",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(UserError, match=r"run.output_dir=s3://b/runs: S3 endpoint .* no credentials; export "
                                        r"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.check_reachable("s3://b/runs", "run.output_dir")
    monkeypatch.undo()
    storage._s3.cache_clear()
    with pytest.raises(UserError, match="train.data_dir=s3://no-such-bucket/p: bucket no-such-bucket does not exist"):
        storage.check_reachable("s3://no-such-bucket/p", "train.data_dir")


def test_object_operations(s3_bucket, tmp_path):
    root = storage.join(s3_bucket, "dir")
    assert not storage.exists(root) and storage.listdir(root) == [] and storage.glob(root, "*") == []
    storage.write_json(storage.join(root, "a.json"), {"x": 1})
    storage.atomic_write(storage.join(root, "sub", "b.bin"), lambda tmp: open(tmp, "wb").write(b"\0" * 1000))
    assert storage.read_json(storage.join(root, "a.json")) == {"x": 1}
    assert storage.size(storage.join(root, "sub", "b.bin")) == 1000
    assert storage.listdir(root) == ["a.json", "sub"]
    assert storage.glob(root, "*.bin", recursive=True) == [f"{root}/sub/b.bin"]
    local = storage.download(root, tmp_path / "copy")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == ["a.json", "sub/b.bin"]
    storage.publish_dir(local, storage.join(s3_bucket, "dir2"))
    assert storage.read_bytes(storage.join(s3_bucket, "dir2", "sub", "b.bin")) == b"\0" * 1000
    storage.delete(root)
    assert not storage.exists(storage.join(root, "a.json"))


def test_local_atomic_write_leaves_no_temp_file(tmp_path):
    def killed_halfway(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed")

    storage.write_text(tmp_path / "x" / "a.txt", "hi")
    with pytest.raises(RuntimeError):
        storage.atomic_write(tmp_path / "x" / "b.txt", killed_halfway)
    assert sorted(os.listdir(tmp_path / "x")) == ["a.txt"]


def test_shards_on_s3_read_like_local_ones(s3_bucket, tmp_path):
    local = write_dataset(tmp_path / "prepared", n_train=150, rows_per_shard=100)  # 100 + 50 rows: 2 files
    remote = storage.join(s3_bucket, "prepared")
    storage.upload_dir(local, remote)
    lf, rf = list_shards(local / "train"), list_shards(storage.join(remote, "train"))
    assert [f.name for f in lf] == [storage.name(f) for f in rf] == ["shard-00000.arrow", "shard-00001.arrow"]
    assert row_counts(rf).tolist() == row_counts(lf).tolist() == [100, 50]
    cols = ["id", "n_frames"]
    assert read_table(rf[1], cols).equals(read_table(lf[1], cols))
    rows = np.random.default_rng(0).integers(0, 150, 40)
    a, b = RowStore(lf).take(rows), RowStore(rf).take(rows)
    assert b.num_rows == 40 and a.equals(b)
    assert b.column("id").to_pylist()[:3] == [f"train-{i:05d}" for i in rows[:3]]


def test_shards_written_before_the_batch_rows_key_still_count(tmp_path):
    table = make_rows(70, 2, 0, "r")
    write_shard_file(table, tmp_path / "new.arrow")
    with pa.OSFile(str(tmp_path / "old.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=64):
            w.write_batch(batch)
    assert pa.ipc.open_file(str(tmp_path / "new.arrow")).metadata == {BATCH_ROWS_KEY: b"64,6"}
    assert row_counts([tmp_path / "new.arrow", tmp_path / "old.arrow"]).tolist() == [70, 70]
    assert RowStore([tmp_path / "old.arrow"]).take([65]).equals(RowStore([tmp_path / "new.arrow"]).take([65]))
