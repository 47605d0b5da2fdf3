"""`train.mixture`: several prepared datasets mixed into one epoch plan (the code is `data/mixing.py`).

Apart from its code because the config schema must load without numpy: `indextts-ray config` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel


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
