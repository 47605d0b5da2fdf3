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
