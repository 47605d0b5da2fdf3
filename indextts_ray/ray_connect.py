"""One way to reach Ray for every command (train, tune, pipeline run, demo): never a stale or foreign instance.

With `RAY_ADDRESS` set (a Ray Job's driver always has it) that cluster is used. Without it, Ray's own
`ray_current_cluster` file (in Ray's temp dir, written by `ray start`) decides: a live cluster there is joined;
a dead one fails at once with one line naming the file (we do not silently start another Ray beside it: the
user meant to use that cluster, and it is gone); no file starts a local Ray for this process.

The address is then passed on explicitly: this process and every worker it starts get `RAY_ADDRESS`, so Ray's
helpers that look the cluster up themselves (the State API that Ray Train's placement-group cleaner and Tune
call) cannot read another instance's address from that shared file. Outside a terminal, progress bars become
plain log lines (no cursor codes in job logs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys

from indextts_ray.errors import UserError

log = logging.getLogger("indextts_ray")

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a job's driver
QUIET_PROGRESS = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def address_file() -> str:
    """Ray's `ray_current_cluster` file (its temp dir: $RAY_TMPDIR, $TMPDIR or /tmp, then `ray/`)."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at a `host:port` GCS address."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _job_env_vars() -> dict:
    raw = os.environ.get(JOB_CONFIG_ENV)
    return (json.loads(raw).get("runtime_env") or {}).get("env_vars", {}) if raw else {}


def connect(local: dict | None = None, fresh: bool = False, **init_kwargs) -> str:
    """Connect this process to Ray (see the module doc) unless it already is; returns the GCS address.

    Args:
        local: `ray.init` arguments for a local Ray only (num_cpus, include_dashboard...: Ray refuses them
            when joining a cluster).
        fresh: always start a local Ray of this process's own, whatever `RAY_ADDRESS` and the address file say
            (tests and benchmarks: hermetic, and never sent to a dead or foreign cluster).
        init_kwargs: `ray.init` arguments in every case (log_to_driver...).
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    env = {} if sys.stdout.isatty() else dict(QUIET_PROGRESS)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    wanted = None if fresh else os.environ.get("RAY_ADDRESS") or None
    if wanted == "auto":
        wanted = None
    from_file = wanted is None and not fresh
    if from_file:
        path = address_file()
        current = open(path).read().strip() if os.path.isfile(path) else None
        if current and not reachable(current):
            raise UserError(f"{path} names the Ray cluster {current}, which is not running (left by a Ray that "
                            f"was not stopped): run `ray stop`, or delete {path} to use a local Ray, or set "
                            "RAY_ADDRESS")
        wanted = current
    if wanted is not None and "://" in wanted:  # Ray Client: its server passes nothing on
        ray.init(address=wanted, **init_kwargs)
        return ray.get_runtime_context().gcs_address
    if wanted is None:
        # a local Ray: its port chosen here, so its raylet and workers inherit RAY_ADDRESS from the start
        port = _free_port()
        os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            ray.init(address="local", **(local or {}), **init_kwargs)
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    else:
        job_env = _job_env_vars()  # a job's own env_vars may not be given again (Ray refuses the merge)
        extra = {k: v for k, v in {"RAY_ADDRESS": wanted, **env}.items() if k not in job_env}
        # the file's cluster by address=None: Ray then also picks up that cluster's auth token
        ray.init(address=None if from_file else wanted, runtime_env={"env_vars": extra}, **init_kwargs)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address  # this process's Ray helpers (Tune, State API) use this cluster
    log.info("Ray: %s", address)
    return address


@contextlib.contextmanager
def simulated_cluster(**head_args):
    """`ray.cluster_utils.Cluster` (a multi-node cluster on this machine, for benchmarks and tests) that is always
    torn down: this driver, every node, and the head address it wrote into Ray's `ray_current_cluster`, which
    would otherwise send every later `ray.init()` on this machine to a dead cluster."""
    import ray
    from ray.cluster_utils import Cluster

    path = address_file()
    before = open(path).read().strip() if os.path.isfile(path) else None
    env_before = os.environ.get("RAY_ADDRESS")
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    # this process's Ray helpers (State API, Train's placement-group cleaner) must use this cluster, not an
    # inherited RAY_ADDRESS (e.g. a test session's own Ray)
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if env_before is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = env_before
        now = open(path).read().strip() if os.path.isfile(path) else None
        if now is not None and now != before:
            if before is not None and reachable(before):
                with open(path, "w") as f:  # put back the live cluster it displaced
                    f.write(before)
            else:
                os.remove(path)
