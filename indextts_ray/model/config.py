"""UnifiedVoice v2 hyperparameters; field names follow the official `gpt:` section of config.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel

EMOTION_LABELS = ["neutral", "happy", "sad", "angry", "depressed", "surprised", "fearful"]


class ConformerConfig(StrictModel):
    """One conditioning Conformer + its Perceiver (official `condition_module` / `emo_condition_module`)."""

    output_size: int = Field(512, gt=0)
    linear_units: int = Field(2048, gt=0)
    attention_heads: int = Field(8, gt=0)
    num_blocks: int = Field(6, gt=0)
    input_layer: Literal["conv2d2"] = "conv2d2"
    perceiver_mult: int = Field(2, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ConformerConfig:
        if self.output_size % self.attention_heads:
            raise ValueError(f"output_size {self.output_size} is not divisible by attention_heads {self.attention_heads}")
        return self


class ModelConfig(StrictModel):
    """Architecture. Official values: `configs/model/indextts2.yaml`; tests/demo: `configs/model/tiny.yaml`."""

    model_dim: int = Field(1280, gt=0)
    layers: int = Field(24, gt=0)
    heads: int = Field(20, gt=0)
    max_text_tokens: int = Field(600, gt=0)
    max_mel_tokens: int = Field(1815, gt=0)
    max_conditioning_inputs: int = Field(1, ge=1)
    number_text_tokens: int = Field(12000, gt=0)
    number_mel_codes: int = Field(8194, gt=2)
    start_text_token: int = 0
    stop_text_token: int = 1
    start_mel_token: int = 8192
    stop_mel_token: int = 8193
    mel_length_compression: int = 1024
    use_mel_codes_as_input: bool = True
    train_solo_embeddings: bool = False
    condition_type: Literal["conformer_perceiver"] = "conformer_perceiver"
    condition_num_latent: int = Field(32, gt=0)
    types: int = Field(1, ge=1)
    condition_module: ConformerConfig = ConformerConfig()
    emo_condition_module: ConformerConfig = ConformerConfig(linear_units=1024, attention_heads=4, num_blocks=4)
    # Ours (not in the official gpt: section): feature width of the conditioning inputs
    # (1024 = w2v-BERT 2.0 hidden size), GPT dropout, activation checkpointing.
    # The official code hard-codes input_dim = emo_perceiver_dim = 1024; other values only suit tiny test models.
    input_dim: int = Field(1024, ge=3)  # Conv2dSubsampling2 needs (input_dim - 1) // 2 >= 1
    emo_perceiver_dim: int = Field(1024, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    checkpointing: bool = False
    emotion_labels: list[str] = Field(default_factory=lambda: list(EMOTION_LABELS))
    emotion_table_dim: int = Field(256, gt=0)
    speaker_classifier_hidden: int = Field(512, gt=0)
    speaker_classifier_dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @property
    def text_vocab_size(self) -> int:
        """Rows of text_embedding / text_head (official: number_text_tokens * types + 1)."""
        return self.number_text_tokens * self.types + 1

    @property
    def conditioning_positions(self) -> int:
        """GPT prefix length: condition_num_latent latents + 2 speed rows (official: 34)."""
        return self.condition_num_latent + 2

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.model_dim % self.heads:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by heads {self.heads}")
        if not (self.start_mel_token < self.number_mel_codes and self.stop_mel_token < self.number_mel_codes):
            raise ValueError("start_mel_token/stop_mel_token must be < number_mel_codes")
        if len(set(self.emotion_labels)) != len(self.emotion_labels) or not self.emotion_labels:
            raise ValueError("emotion_labels must be a non-empty list without duplicates")
        if not self.use_mel_codes_as_input or self.train_solo_embeddings:
            raise ValueError("IndexTTS2 uses use_mel_codes_as_input=true and train_solo_embeddings=false (others unsupported)")
        return self


class LossWeights(StrictModel):
    """Weights of the training losses (`TrainingModel.forward`); a weight of 0 keeps that loss out of the graph.

    Defaults: mel 1.0 with text 0.01 (the Tortoise/DLAS UnifiedVoice recipe IndexTTS descends from; community
    IndexTTS2 fine-tuners use mel only = text 0.0), speaker 0.1 (the GRL adversary of Stage 2; inactive when
    the batch has no `speaker_ids` or the model has no speaker classifier), emotion classifier and emotion-label
    table off unless the stage config turns them on.
    """

    text: float = Field(0.01, ge=0.0)
    mel: float = Field(1.0, ge=0.0)
    speaker: float = Field(0.1, ge=0.0)
    emotion: float = Field(0.0, ge=0.0)
    emotion_table: float = Field(0.0, ge=0.0)
    stop: float = Field(0.0, ge=0.0, description="extra weight on the cross-entropy of each sequence's stop-token "
                        "target (mean over sequences; the official recipe has none: 0)")
