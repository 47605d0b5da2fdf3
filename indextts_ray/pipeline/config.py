"""`pipeline:` section: which steps run, where their outputs go, and each stage's config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel


class SynthStep(StrictModel):
    """Generate the synthetic corpus and use it as `data.manifest` (demo and tests; no downloads)."""

    enabled: bool = False
    speakers: int = Field(6, ge=2)
    utts_per_speaker: int = Field(24, ge=2)
    languages: list[str] = Field(default_factory=lambda: ["ko", "en"])
    seed: int = 0
    dir: str | None = Field(None, description="where the corpus (audio + manifest) goes; None = <work_dir>/corpus. "
                            "Required, a local or shared folder, when work_dir is an object-store URI: prepare reads "
                            "audio from file paths")


class TokenizerStep(StrictModel):
    """Optional step before prepare: a BPE model for the corpus, used by prepare (and then by training).

    Without it `prepare` trains one on its own when `data.tokenizer` is unset; the step exists to extend an
    existing model (`base`, e.g. the official bpe.model) with a new language keeping every old id, or to
    train one once and share it.
    """

    enabled: bool = False
    base: str | None = Field(None, description="bpe.model to extend (ids kept); None = train a new one")
    pieces: int = Field(2000, ge=1, description="extend: at most this many new pieces")
    language: str | None = Field(None, description="extend: learn new pieces only from this language's rows")
    character_coverage: float = Field(1.0, gt=0, le=1)


class SpeakersStep(StrictModel):
    top_k: int = Field(500, ge=1)
    min_samples: int = Field(50, ge=1)


class StageStep(StrictModel):
    """A stage = its config file + overrides; the pipeline fills data_dir, init_checkpoint, mapping, run dir."""

    config: str
    overrides: list[str] = Field(default_factory=list)
    tune: bool = Field(False, description="stage 2 only: `config` is a tune config (configs/tune/*.yaml); run the "
                       "Ray Tune band-control search and take its best trial's weights as the Stage-2 result")


class EmotionControlStep(StrictModel):
    """Emotion-controlled generation judged on the codes (`indextts-ray eval --emotion-control`); off by default.
    Each export generates speakers x texts x 7 emotions x 2 (label, reference clip) items."""

    enabled: bool = False
    speakers: int = Field(4, ge=1)
    texts: int = Field(4, ge=1)
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="blend with the speaker prompt's own emotion vector")
    max_codes: int = Field(300, ge=1)
    splits: list[Literal["train", "val"]] = Field(default_factory=lambda: ["val"], min_length=1,
                                                  description="real rows that train the code-space judges")
    reference: bool = True
    epochs: int = Field(30, ge=1, description="judge training epochs")
    judge_code_vectors: bool = Field(False, description="start the judges' code embeddings from the builtin "
                                     "codebook's code vectors, with one hidden layer (builtin features only)")


class EvalStep(StrictModel):
    enabled: bool = True
    max_items: int = Field(400, ge=10, description="held-out rows for the losses (and the probes' prompt clips)")
    probe_splits: list[Literal["train", "val"]] = Field(
        default_factory=list, description="probe every utterance of these splits instead of the held-out rows' "
        "prompts (more clips: goal checks need a test set that tells the goal from chance)")
    max_probe_clips: int = Field(4000, ge=10, description="at most this many probe clips (seeded sample)")
    n_prompts: int = Field(8, ge=1, description="held-out rows generated for the sampling sanity check (stop "
                           "rate, length ratio)")
    emotion_control: EmotionControlStep = EmotionControlStep()


class PipelineConfig(StrictModel):
    @model_validator(mode="after")
    def _tune_only_in_stage2(self):
        for n in (1, 3):
            if getattr(self, f"stage{n}").tune:
                raise ValueError(f"pipeline.stage{n}.tune: only stage 2 can be tuned")
        return self


    work_dir: str = Field("pipeline_out", description="every step's outputs: a folder, or an object-store URI "
                          "(s3://bucket/prefix, gs://...; see storage.py)")
    synth: SynthStep = SynthStep()
    tokenizer: TokenizerStep = TokenizerStep()
    speakers: SpeakersStep = SpeakersStep()
    stage1: StageStep = StageStep(config="configs/stage1.yaml")
    stage2: StageStep = StageStep(config="configs/stage2.yaml")
    stage3: StageStep = StageStep(config="configs/stage3.yaml")
    eval: EvalStep = EvalStep()
