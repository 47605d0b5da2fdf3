import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Ray/wandb must never reach the network or a user's account from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs; workers take fractions)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
