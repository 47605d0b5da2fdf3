"""Config sections of the long-run features: `train.guard`, `train.ema`, `train.early_stopping`, `train.band`.

They live apart from their code (guard.py, ema.py, early_stop.py, band.py) because the config schema must load
without torch or numpy: `indextts-ray config` and `--help` stay fast. `train.mixture` is a data concern:
`data/mixture_config.py`.
"""

from __future__ import annotations

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
