"""cluster.yaml: valid for Ray's own launcher schema, and works on a stock Ubuntu GPU image."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"
README = CLUSTER.parent / "README.md"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_validates_with_the_ray_launcher_schema():
    cfg = load()
    validate_config(prepare_config(copy.deepcopy(cfg)))
    start = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # job server not exposed; use `ray dashboard cluster.yaml`
    assert start.count("NCCL_P2P_DISABLE=1") == 2  # RTX 4090: no P2P on either node kind


def test_works_on_a_stock_ubuntu_image():
    cfg = load()
    # a non-root ssh user can write its mount targets: the home directory, never /opt or /usr
    for target in cfg["file_mounts"]:
        assert target.startswith("~/"), f"file_mounts target {target} is not in the ssh user's home"
    code = next(t for t, src in cfg["file_mounts"].items() if src == ".")
    assert all(code in c for c in cfg["setup_commands"])  # installed where the code is mounted
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cfg[kind])
        # head and workers share one token (token auth is on by default with `ray start` in 2.60)
        assert "RAY_AUTH_MODE=token" in start
        assert re.search(r"NCCL_SOCKET_IFNAME=\S+", start)
        # jobs' `python` is the venv's (the job supervisor runs entrypoints with the raylet's PATH)
        assert "indextts-ray/.venv/bin:$PATH" in start
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "bucket_cap" not in CLUSTER.read_text()  # nothing sets DDP bucket sizes: no promise of it
    assert re.search(r"NVIDIA driver >= \d+", README.read_text()), "README states the driver the CUDA build needs"


def test_nodes_use_an_object_store_not_nfs():
    """Checkpoints and data go to an object store every node reaches: its endpoint and credentials on every node."""
    cfg, text = load(), CLUSTER.read_text()
    assert re.search(r"pipeline.work_dir=s3://<bucket>/\S+", text)  # the storage_path users set
    assert "/data" not in text  # no shared mount assumed
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert re.search(r"AWS_ENDPOINT_URL=\$\{S3_ENDPOINT:-\S*\}", " ".join(cfg[kind]))  # before `ray start`
    assert cfg["file_mounts"].get("~/.aws/credentials") == "~/.aws/credentials"
    readme = README.read_text()
    assert "s3://<bucket>/indextts-ray" in readme and "AWS_ENDPOINT_URL" in readme


def test_validation_can_fail():
    cfg = load()
    cfg["max_workers"] = "many"
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's error type is Ray's internal choice
        validate_config(prepare_config(cfg))
