import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    """A script of `benchmarks/` imported as a module (its functions tested, its main not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Ray/wandb must never reach the network or a user's account from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def repo() -> Path:
    return REPO


def free_ports(n: int) -> list[int]:
    """`n` distinct ports nothing listens on right now (all held open until every one is picked)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# Object-store tests use a moto S3 server on 127.0.0.1 (`s3_bucket`). Its endpoint and dummy keys are set here,
# before any Ray starts, so Ray workers inherit them as a cluster's nodes inherit theirs from `ray start`; they
# replace any real settings of the shell, so no test can reach a real store.
S3_PORT = free_ports(1)[0]
S3_ENV = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_ACCESS_KEY_ID": "testing",
          "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
for _var in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_var, None)
os.environ.update(S3_ENV)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server for the session (in a thread of this process), at S3_ENV's endpoint."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield S3_ENV["AWS_ENDPOINT_URL"]
    server.stop()


def new_bucket(endpoint: str, hint: str) -> str:
    """Create a bucket with a unique name on the test server; returns `s3://<bucket>`."""
    import re
    import uuid

    import pyarrow.fs as pafs

    name = re.sub(r"[^a-z0-9-]", "-", hint.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket for one test: `s3://<bucket>`."""
    return new_bucket(s3_server, request.node.name)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs; workers take fractions)."""
    import ray

    from indextts_ray.ray_connect import connect

    if not ray.is_initialized():
        # the project's own connect (its address exported to every Ray helper), always a local Ray of the
        # session's own; with the dashboard (127.0.0.1, a free port): Train's cleanup of stopped runs uses it
        connect(local={"num_cpus": 2, "include_dashboard": True, "dashboard_port": free_ports(1)[0]}, fresh=True,
                log_to_driver=False)
        # but not in this process's environment: tests that start their own head (`ray start`, simulated
        # clusters) and submit to it must not inherit the session's address (a Jobs submission then ran its
        # entrypoint outside the head's environment)
        os.environ.pop("RAY_ADDRESS", None)
    yield
