"""Schemas of the Stage-2 band controller (`train.band`) and of the Ray Tune search over it (`tune:`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel


class BandControlConfig(StrictModel):
    """Keep Stage-2 speaker accuracy inside [low, high] by moving the GRL λ and the speaker-loss weight.

    Above the band the controller raises λ (a stronger adversary strips speaker information from the emotion
    vector); below it, it raises the speaker-loss weight (the classifier must stay a competent adversary).
    Both act on logarithms (the useful range spans two decades) with proportional-integral gains. A loss
    spike or a NaN halves both, optionally turns AMP off and asks the loop to reload the last checkpoint.
    """

    enabled: bool = Field(True, description="used in stage 2 when loss.speaker > 0; off = λ and weight stay fixed")
    low: float = Field(0.30, ge=0.0, le=1.0, description="lower edge of the target speaker-accuracy band")
    high: float = Field(0.60, ge=0.0, le=1.0, description="upper edge of the target speaker-accuracy band")
    margin: float = Field(0.25, ge=0.0, le=0.5, description="aim this fraction of the band width inside each "
                          "edge (0 = act only outside the band, 0.5 = hold the band centre)")
    window: int = Field(20, ge=1, description="EMA span (steps) of the speaker accuracy the controller sees")
    update_every: int = Field(10, ge=1, description="steps between two control updates")
    kp_lambda: float = Field(2.0, ge=0.0, description="proportional gain on log λ (per unit of accuracy error)")
    ki_lambda: float = Field(0.5, ge=0.0, description="integral gain on log λ (per update and unit error)")
    kp_weight: float = Field(2.0, ge=0.0, description="proportional gain on log weight")
    ki_weight: float = Field(0.5, ge=0.0, description="integral gain on log weight")
    lambda_min: float = Field(0.1, gt=0.0)
    lambda_max: float = Field(10.0, gt=0.0)
    weight_min: float = Field(0.01, gt=0.0)
    weight_max: float = Field(1.0, gt=0.0)
    spike_factor: float = Field(3.0, gt=1.0, description="loss above factor x its running mean = divergence")
    loss_window: int = Field(50, ge=1, description="EMA span (steps) of the loss for spike detection")
    spike_after: int = Field(20, ge=1, description="steps of loss history needed before a spike can count")
    divergence_factor: float = Field(0.5, gt=0.0, lt=1.0, description="λ and weight are multiplied by this")
    disable_amp_on_divergence: bool = True
    reload_on_divergence: bool = Field(True, description="ask the loop to reload the last checkpoint's weights")
    max_divergences: int = Field(5, ge=1, description="more divergences than this stop the run with an error")

    @model_validator(mode="after")
    def _ordered(self) -> BandControlConfig:
        problems = [f"{lo_name} ({lo}) must be < {hi_name} ({hi})" for lo_name, lo, hi_name, hi in (
            ("low", self.low, "high", self.high),
            ("lambda_min", self.lambda_min, "lambda_max", self.lambda_max),
            ("weight_min", self.weight_min, "weight_max", self.weight_max),
        ) if lo >= hi]
        if problems:
            raise ValueError("; ".join(problems))
        return self


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
