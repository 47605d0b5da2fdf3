"""Every trainable parameter gets a gradient in one step of every stage (DDP runs without
`find_unused_parameters`): heads whose loss weight is 0 are frozen, the language-model heads included."""

from pathlib import Path

import pytest
import torch

from indextts_ray.config import load_config
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.collate import collate, to_device
from indextts_ray.train.loop import freeze_modules

from .conftest import make_batch_rows

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("overrides", [[], ["train.loss.text=0.0"]])
def test_no_trainable_parameter_without_gradient(stage, overrides):
    cfg = load_config(REPO / f"configs/demo/stage{stage}.yaml", overrides)
    torch.manual_seed(0)
    model = TrainingModel(cfg.model, n_speakers=4)
    summary = freeze_modules(model, cfg.train)
    batch = to_device(collate(make_batch_rows(6, 4, 0, "u"), {f"spk{i}": i for i in range(4)}), torch.device("cpu"))
    model(batch, cfg.train.loss)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert summary["trainable"] == sum(p.numel() for p in model.parameters() if p.grad is not None)
    text_head = model.model.text_head.weight
    assert text_head.requires_grad is (cfg.train.loss.text > 0 and "text_head" not in cfg.train.freeze)
