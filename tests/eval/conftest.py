from pathlib import Path

import pytest
import torch

from indextts_ray.config import load_config
from indextts_ray.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg() -> ModelConfig:
    return load_config(REPO / "configs" / "model" / "tiny.yaml", schema=ModelConfig)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU spinning OpenMP threads make
    every op much slower; run on one thread and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
