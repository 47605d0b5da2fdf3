"""Config sections of the long-run features: `train.guard`, `train.ema`, `train.early_stopping`, `train.mixture`.

They live apart from their code (guard.py, ema.py, early_stop.py, data/mixing.py, which re-export them)
because the config schema must load without torch or numpy: `indextts-ray config` and `--help` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel


class SpikeGuardConfig(StrictModel):
    """`train.guard`: when a step counts as a spike and what happens after repeated spikes."""

    enabled: bool = True
    loss_factor: float = Field(3.0, gt=1, description="skip when loss > loss_factor * running mean loss")
    grad_factor: float = Field(10.0, gt=1, description="skip when grad norm > grad_factor * running mean norm")
    warmup_steps: int = Field(100, ge=0, description="accepted steps observed before spikes are judged "
                              "(non-finite values are always skipped)")
    decay: float = Field(0.99, gt=0, lt=1, description="running mean: m <- decay * m + (1 - decay) * x")
    max_consecutive_skips: int = Field(5, ge=1, description="this many skips in a row reload the last checkpoint")
    reload_lr_factor: float = Field(0.5, gt=0, le=1, description="the learning rate is multiplied by this on reload")
    max_reloads: int = Field(3, ge=0, description="one more reload than this stops the run (DivergenceError)")
    bad_batches_dir: str = Field("bad_batches", description="<run>/<dir>/rank<r>.jsonl: ids of skipped batches")


class EMAConfig(StrictModel):
    """`train.ema`: an average of the weights kept beside the training weights (and in the checkpoint)."""

    enabled: bool = False
    decay: float = Field(0.999, gt=0, lt=1, description="weight of the old average at each update")
    every_n_steps: int = Field(1, ge=1, description="update after every n-th optimizer step")
    on_cpu: bool = Field(False, description="keep the average in host memory (saves one fp32 model of GPU memory)")
    use_for_eval: bool = Field(True, description="validation (and the best/ export) runs with the averaged weights")
    use_for_export: bool = Field(True, description="an export from a checkpoint writes the averaged weights")


class EarlyStoppingConfig(StrictModel):
    """`train.early_stopping`: per stage (each stage's YAML sets its own)."""

    enabled: bool = False
    metric: Literal["val_loss"] = Field("val_loss", description="validation mel loss (token-weighted, all ranks)")
    patience: int = Field(5, ge=1, description="evaluations in a row without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="an improvement must lower the best value by more than this")


class MixtureDataset(StrictModel):
    path: str = Field(description="a prepared data dir (output of `indextts-ray prepare`); its train/ is used")
    weight: float | None = Field(None, gt=0, description="share of samples; weights are normalised to sum 1")
    name: str | None = Field(None, description="label in the logs (default: the folder name)")

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


class MixtureConfig(StrictModel):
    """`train.mixture`: several prepared datasets, each with a weight, or all shared out by temperature."""

    datasets: list[MixtureDataset] = Field(min_length=1)
    temperature: float | None = Field(None, gt=0, description="p_i ∝ n_i^(1/T) instead of weights")
    epoch_samples: int | None = Field(None, gt=0, description="rows per epoch; default: all rows of all datasets")

    @model_validator(mode="after")
    def _consistent(self) -> MixtureConfig:
        weighted = [d.weight is not None for d in self.datasets]
        if any(weighted) and not all(weighted):
            raise ValueError("give every mixture dataset a weight, or none (then temperature or natural sizes)")
        if all(weighted) and self.temperature is not None:
            raise ValueError("mixture: use weights or temperature, not both")
        for what, values in (("name", [d.label for d in self.datasets]),
                             ("path", [str(Path(d.path)) for d in self.datasets])):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"mixture: duplicate dataset {what} {dup}")
        return self

    @property
    def names(self) -> list[str]:
        return [d.label for d in self.datasets]

    def probabilities(self, sizes: list[int]) -> list[float]:
        """Sample share of each dataset, given their row counts."""
        if self.datasets[0].weight is not None:
            raw = [float(d.weight) for d in self.datasets]
        else:
            raw = [float(n) ** (1.0 / (self.temperature or 1.0)) for n in sizes]
        total = sum(raw)
        return [r / total for r in raw]
