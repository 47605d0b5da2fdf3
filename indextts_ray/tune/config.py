"""Schema of the Ray Tune search over the Stage-2 band controller (`tune:`).

`train.band` (BandControlConfig) belongs to the training loop that runs the controller: `train/robust_config.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel
from indextts_ray.train.robust_config import BandControlConfig  # noqa: F401 -- re-exported for benchmarks/band_control.py


class Distribution(StrictModel):
    """One searched value: `loguniform`/`uniform` over [low, high], `choice` or `grid` over `values`."""

    kind: Literal["loguniform", "uniform", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Distribution:
        if self.kind in ("loguniform", "uniform"):
            if self.low is None or self.high is None or self.values is not None:
                raise ValueError(f"{self.kind} needs low and high (and no values)")
            if not self.low < self.high or (self.kind == "loguniform" and self.low <= 0):
                raise ValueError(f"{self.kind} needs 0 < low < high" if self.kind == "loguniform" else "low < high")
        elif not self.values or self.low is not None or self.high is not None:
            raise ValueError(f"{self.kind} needs a non-empty values list (and no low/high)")
        return self


class TuneConfig(StrictModel):
    """The Stage-2 search: each trial is one short Stage-2 run (a TorchTrainer) with sampled values.

    `space` maps dotted config keys (`train.grl_lambda`, `train.loss.speaker`, `train.lr`, `train.band.ki_lambda`,
    ...) to distributions; they are validated against the config schema before anything starts.
    """

    num_samples: int = Field(8, ge=1, description="trials (x the grid size when the space has grid entries)")
    scheduler: Literal["asha", "pbt", "pb2", "none"] = "asha"
    metric: Literal["band_score", "in_band"] = Field("band_score", description="maximised; see tune/score.py")
    space: dict[str, Distribution] = Field(default_factory=dict)
    max_steps: int = Field(2000, gt=0, description="optimizer steps per trial (its train.max_steps)")
    window_steps: int = Field(50, gt=0, description="evaluation window: speaker_acc is averaged over it")
    mel_penalty: float = Field(1.0, ge=0.0, description="score -= penalty x relative mel-loss increase")
    reference_mel_loss: float | None = Field(
        None, gt=0, description="Stage-1 mel loss; None = the trial's first window (it starts from Stage 1)")
    grace_steps: int = Field(200, gt=0, description="ASHA: steps every trial gets before it can be stopped")
    reduction_factor: int = Field(3, ge=2, description="ASHA: keep 1/factor of the trials at each rung")
    perturbation_interval: int = Field(200, gt=0, description="PBT/PB2: steps between exploit/explore")
    max_concurrent_trials: int = Field(1, ge=1, description="trials at once (each holds its train workers)")
    trial_cpus: float = Field(0.1, ge=0, description="CPU of the trial process itself (its workers reserve "
                              "train.scaling; the ingest fetch tasks take train.scaling.ingest_cpus)")
    poll_seconds: float = Field(2.0, gt=0, description="how often a trial reads its run's metrics.jsonl")

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        if self.scheduler in ("pbt", "pb2"):
            if self.perturbation_interval % self.window_steps:
                raise ValueError("perturbation_interval must be a multiple of window_steps (scores are per window)")
            perturbable = [k for k, d in self.space.items() if d.kind != "grid"]
            if not perturbable:
                raise ValueError(f"scheduler {self.scheduler} needs at least one non-grid entry in space")
            if self.scheduler == "pb2" and any(d.kind not in ("uniform", "loguniform") for d in self.space.values()):
                raise ValueError("pb2 models continuous values only: use uniform/loguniform entries")
        if self.grace_steps > self.max_steps:
            raise ValueError(f"grace_steps ({self.grace_steps}) > max_steps ({self.max_steps})")
        return self
