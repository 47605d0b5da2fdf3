import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

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
    yield
