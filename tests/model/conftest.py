from pathlib import Path

import pytest
import torch

from indextts_ray.config import load_config
from indextts_ray.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]
ASSETS = Path(__file__).resolve().parent / "assets"


def model_cfg(name: str = "tiny", overrides: list[str] | None = None) -> ModelConfig:
    return load_config(REPO / "configs" / "model" / f"{name}.yaml", overrides, schema=ModelConfig)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return model_cfg("tiny")


def make_batch(cfg: ModelConfig, seed: int = 0, b: int = 2) -> dict[str, torch.Tensor]:
    """A small padded batch in the TrainingModel layout; padding holds junk ids on purpose."""
    g = torch.Generator().manual_seed(seed)
    n_text, n_codes = cfg.number_text_tokens, cfg.number_mel_codes - 2
    text_lengths = torch.tensor([9, 6, 8, 5][:b])
    code_lengths = torch.tensor([14, 10, 12, 7][:b])
    spk_lengths = torch.tensor([40, 33, 37, 29][:b])
    return {
        "text_ids": torch.randint(2, n_text, (b, 9), generator=g),
        "text_lengths": text_lengths,
        "codes": torch.randint(0, n_codes, (b, 14), generator=g),
        "code_lengths": code_lengths,
        "spk_feats": torch.randn(b, 40, cfg.input_dim, generator=g),
        "spk_lengths": spk_lengths,
    }


# Reference values of the official implementation were computed for this config, with these weights and
# inputs (see test_forward.py::test_matches_official_implementation).
GOLDEN_OVERRIDES = ["input_dim=1024", "emo_perceiver_dim=1024", "model_dim=64", "heads=4"]


@torch.no_grad()
def fill_deterministic(module: torch.nn.Module) -> None:
    """Overwrite every parameter with uniform(-0.1, 0.1) (norm gains: 1 + that) from a per-parameter seeded
    generator (buffers kept), so the values do not depend on construction order or on the global RNG."""
    for i, (name, p) in enumerate(module.named_parameters()):
        g = torch.Generator().manual_seed(1000 + i)
        gain = p.ndim == 1 and name.endswith(("weight", "gamma"))
        p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.2 + (1.0 if gain else 0.0))


def golden_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "text": torch.tensor([[5, 17, 200, 33, 9, 101, 44], [250, 3, 77, 12, 60, 99, 99]]),
        "text_lengths": torch.tensor([7, 5]),
        "codes": torch.tensor([[1, 5, 9, 13, 40, 2, 63, 7, 8, 30, 31], [4, 4, 60, 22, 0, 17, 3, 3, 11, 11, 11]]),
        "code_lengths": torch.tensor([11, 8]),
        "spk_feats": (torch.rand(2, 50, 1024, generator=g) - 0.5) * 2,
        "spk_lengths": torch.tensor([50, 41]),
        "emo_feats": (torch.rand(2, 44, 1024, generator=g) - 0.5) * 2,
        "emo_lengths": torch.tensor([44, 30]),
    }


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU 2 spinning OpenMP threads make
    every op ~10x slower; run these tests on one thread and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
