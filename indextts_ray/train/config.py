"""Training config: one schema for all three stages; a stage is only a different YAML (`configs/stage{1,2,3}.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from indextts_ray.data.mixture_config import MixtureConfig
from indextts_ray.model.config import LossWeights
from indextts_ray.schema import StrictModel
from indextts_ray.train.band import controller_for
from indextts_ray.train.robust_config import (
    BandControlConfig,
    EarlyStoppingConfig,
    EMAConfig,
    SpikeGuardConfig,
)


class BatchConfig(StrictModel):
    """Token-budget length bucketing (per micro-batch, per worker)."""

    max_tokens: int = Field(6000, gt=0, description="budget of padded (text + codes + prompt) positions per micro-batch")
    max_batch_size: int = Field(64, gt=0)
    shuffle_window: int = Field(2048, gt=0, description="rows sorted by length together before batching")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step and rank at the largest world "
                            "size; an elastic run recomputes it so tokens per optimizer step stay the same")


class CheckpointSettings(StrictModel):
    every_steps: int = Field(500, gt=0)
    every_minutes: float | None = Field(None, gt=0, description="also checkpoint on wall time (elastic/spot runs)")
    keep: int = Field(3, ge=1, description="latest checkpoints kept; the best by val loss is kept separately")
    async_upload: bool = Field(False, description="upload to storage in the background (training goes on)")


class ScalingSettings(StrictModel):
    """`num_workers: [min, max]` makes the run elastic: workers may leave and join; it goes on at any size."""

    num_workers: int | tuple[int, int] = 1
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every rank holds the whole model, gradients and AdamW state; fsdp: FSDP2 shards "
        "them over the ranks (~16 bytes per trainable parameter / ranks); same checkpoints either way")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="extra custom resources")
    ingest_cpus: float = Field(0.25, gt=0, description="CPU of each Ray Data fetch task of the training/validation "
                               "stream: a fraction, so reads never wait for a whole CPU the workers already hold")
    feature_actors: int = Field(1, ge=1, description="streaming features (data.features.mode=streaming): "
                                "extractor actors per rank and split; each loads the extractor once")
    feature_actor_cpus: float = Field(0.5, gt=0, description="CPU of each extractor actor (a fraction on a busy node)")
    feature_actor_gpus: float = Field(0.0, ge=0, description="GPU of each extractor actor; 0 = the extractor runs on "
                                      "CPU. A fraction shares a card (e.g. 0.25 with trainer workers at 0.75 GPU "
                                      "via resources_per_worker); needs use_gpu")
    max_failures: int | None = Field(None, ge=-1, description="-1 = retry forever; None = 3, or forever if elastic")
    elastic_monitor_interval_s: float = Field(60.0, gt=0)

    @field_validator("num_workers")
    @classmethod
    def _range(cls, v):
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 1 <= lo <= hi:
            raise ValueError(f"num_workers must be >= 1 and [min, max] with min <= max, got {v}")
        return v

    @model_validator(mode="after")
    def _feature_gpus(self) -> ScalingSettings:
        if self.feature_actor_gpus > 0 and not self.use_gpu:
            raise ValueError(f"feature_actor_gpus {self.feature_actor_gpus} needs use_gpu: true (a CPU-only run "
                             "would wait forever for a GPU); set feature_actor_gpus: 0 to extract on CPU")
        return self

    @property
    def elastic(self) -> bool:
        return not isinstance(self.num_workers, int) and self.num_workers[0] != self.num_workers[1]

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    @property
    def failures(self) -> int:
        if self.max_failures is not None:
            return self.max_failures
        return -1 if self.elastic else 3


class LoggingSettings(StrictModel):
    every_steps: int = Field(10, gt=0)
    wandb: bool = True
    wandb_project: str = "indextts-ray"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    tensorboard: bool = True
    peak_tflops: float | None = Field(None, gt=0, description="per-device peak for MFU; None = from the device table")
    sample_ids: bool = Field(False, description="write every consumed sample id to <run>/samples/ (audits, tests)")


class TrainConfig(StrictModel):
    """Everything the loop needs. Stage 1/2/3 presets live in configs/stage*.yaml."""

    stage: Literal[1, 2, 3] = 1
    data_dir: str | None = Field(None, description="output of `indextts-ray prepare` (has train/ and val/)")
    mixture: MixtureConfig | None = Field(None, description="several prepared datasets with weights, instead of "
                                          "data_dir; validation uses all their val/ splits")
    init_checkpoint: str | None = Field(None, description="official gpt.pth or an exported stage dir; None = scratch")
    speaker_mapping: str | None = Field(None, description="speaker_mapping.json; required when loss.speaker > 0")
    only_mapped_speakers: bool = Field(False, description="train on the rows whose speaker is in the mapping")
    emotion_reference: Literal["prompt", "target", "target_crop"] = Field(
        "prompt", description="the audio the emotion conditioner hears: the speaker prompt, the target itself, or "
        "a seeded window of half the target (data/ingest.py); a row's emotion_audio_path file always wins")
    freeze: list[str] = Field(default_factory=list, description="UnifiedVoice sub-modules whose parameters stay fixed")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (None = epochs)")
    lr: float = Field(2e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(1000, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.96)
    grad_clip: float = Field(1.0, gt=0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    grl_lambda: float = Field(1.0, ge=0)
    band: BandControlConfig = Field(BandControlConfig(), description="stage-2 speaker-accuracy band controller")
    loss: LossWeights = LossWeights()
    batch: BatchConfig = BatchConfig()
    eval_every_steps: int = Field(500, gt=0)
    val_max_batches: int | None = Field(None, gt=0)
    checkpoint: CheckpointSettings = CheckpointSettings()
    scaling: ScalingSettings = ScalingSettings()
    logging: LoggingSettings = LoggingSettings()
    guard: SpikeGuardConfig = SpikeGuardConfig()
    ema: EMAConfig = EMAConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    export_from: Literal["auto", "best", "last"] = Field(
        "auto", description="what `final` (the next stage's init) and `indextts-ray export RUN` take: the best "
        "validation weights (<run>/best) or the last checkpoint; auto = best when early_stopping is enabled")

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.loss.speaker > 0 and self.stage == 2 and self.speaker_mapping is None:
            raise ValueError("stage 2 with loss.speaker > 0 needs train.speaker_mapping (run `indextts-ray speakers`)")
        if self.only_mapped_speakers and self.speaker_mapping is None:
            raise ValueError("only_mapped_speakers needs train.speaker_mapping")
        if self.mixture is not None and self.data_dir is not None:
            raise ValueError("set train.data_dir or train.mixture, not both")
        if (self.scaling.strategy == "fsdp" and self.amp != "off" and self.band.disable_amp_on_divergence
                and controller_for(self) is not None):
            # FSDP fixes the compute dtype when it shards: mixed precision cannot be switched off mid-run
            raise ValueError("train.scaling.strategy=fsdp cannot turn AMP off on a divergence (Stage-2 band control): "
                             "set train.band.disable_amp_on_divergence=false (λ and weight are still lowered and the "
                             "checkpoint reloaded), or train.amp=off")
        return self

    @property
    def data_dirs(self) -> list[str]:
        """The prepared datasets this stage reads: the mixture's, else data_dir (empty when neither is set)."""
        if self.mixture is not None:
            return [d.path for d in self.mixture.datasets]
        return [self.data_dir] if self.data_dir else []

    @property
    def export_best(self) -> bool:
        return self.export_from == "best" or (self.export_from == "auto" and self.early_stopping.enabled)
