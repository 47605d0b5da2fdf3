"""`data:` section: where the corpus is, how rows are validated, paired, split, featurised and sharded.

Relative `root` and `output_dir` are relative to the working directory; a relative `manifest` is relative to
`root`; relative audio paths inside a manifest are relative to the manifest's folder and must stay under
`root` (rows that escape it are rejected).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from indextts_ray.schema import StrictModel
from indextts_ray.text.config import TextConfig


class FeaturesConfig(StrictModel):
    """Which extractor turns 16 kHz audio into conditioning features and 50 Hz target codes.

    `builtin` needs no weights: normalised log-mel features (`n_mels` = feature dim) and codes from a k-means
    codebook (`codebook_size`) fitted on `kmeans_sample_frames` frames of the corpus itself, saved in
    `<output_dir>/features/` and reused on rerun. The `n_mels`/`codebook_size`/`kmeans_*` keys apply to
    `builtin` only; other kinds take their sizes from their weights.

    `w2vbert-maskgct` (the real IndexTTS2 inputs) loads local copies of the released files, never downloads:
    `w2vbert_dir` (facebook/w2v-bert-2.0: config.json, model.safetensors, preprocessor_config.json),
    `w2v_stat_path` (wav2vec2bert_stats.pt), `semantic_codec_path` (amphion/MaskGCT
    semantic_codec/model.safetensors). Features are `hidden_states[layer]` normalised with the stats.

    `mode` decides where the conditioning features live (codes are always stored: they are the targets).
    `stored` (default): every utterance's own float16 features are in its row and the ingest crops a prompt's
    stored frames (w2v-BERT: ≈ 100 KB per second of audio). `streaming`: none are stored (`feats`, and the
    `prompt_feats`/`emo_feats` of rows with their own files, are empty blobs; a row keeps its absolute
    `audio_path`, `n_frames` and `feat_dim`); training computes each prompt's and emotion reference's features
    from the audio inside the Ray Data stream, on extractor actors (`train.scaling.feature_actors`,
    `feature_actor_cpus`, `feature_actor_gpus`), and crops the same frames, so the batches equal stored mode's.
    Choose it when the features would not fit the storage (w2v-BERT: ~1.6 TB for 2.7M utterances) and the GPUs
    can spare ~17/24 of a w2v-BERT forward per prompt (README, "Streaming features"). The audio files and the
    extractor's weights must stay at the paths `prepare` used, on every node that runs an extractor actor.
    """

    kind: Literal["builtin", "w2vbert-maskgct"] = "builtin"
    mode: Literal["stored", "streaming"] = "stored"
    n_mels: int = Field(80, gt=0, le=256)
    codebook_size: int = Field(1024, ge=2)
    kmeans_sample_frames: int = Field(50_000, gt=0)
    kmeans_seed: int = 0
    prosody: bool = Field(False, description="builtin: the last 3 of the n_mels channels are log-F0, voicing and "
                          "log-energy (the delivery that carries emotion) instead of mel bands")
    prosody_weight: float = Field(1.0, gt=0, description="builtin: weight of the prosody channels in the k-means "
                                  "distance (codes spend more of the codebook on pitch and loudness)")

    w2vbert_dir: str | None = None
    w2v_stat_path: str | None = None
    semantic_codec_path: str | None = None
    layer: int = Field(17, ge=1)  # IndexTTS2: the output of the 17th conformer layer (index 0 = projection)
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")  # no quiet CPU fallback: cuda must exist

    @model_validator(mode="after")
    def _weights_given(self) -> FeaturesConfig:
        if self.kind == "w2vbert-maskgct":
            missing = [k for k in ("w2vbert_dir", "w2v_stat_path", "semantic_codec_path") if not getattr(self, k)]
            if missing:
                raise ValueError(f"kind w2vbert-maskgct needs {', '.join(missing)} (local weight files)")
        return self


class SplitConfig(StrictModel):
    """Deterministic train/val split by a hash of the id (or of the speaker: whole speakers held out)."""

    val_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    by: Literal["id", "speaker"] = "id"
    seed: int = 0


class PromptConfig(StrictModel):
    """How each target gets its speaker prompt, drawn per epoch at training time (`data/prompts.py`) among the
    other accepted utterances of its speaker; only `max_seconds` matters to `prepare` (it cuts explicit
    `prompt_audio_path`/`emotion_audio_path` clips), so changing the rest never re-extracts features.

    `max_seconds`: prompts are random crops of at most this long (a new crop every epoch).
    `same_emotion`: `no` any emotion; `prefer` same emotion when the speaker has one (other picks counted);
    `require` same emotion, or the target is left out of training (counted as `no_same_emotion_prompt`).
    `single_utterance`: a target whose speaker has no other accepted utterance is left out (`reject`, counted
    as `single_utterance_speaker`) or prompted by its own audio (`self`: leaks the target into the prompt,
    so only for tiny sets).
    """

    max_seconds: float = Field(15.0, gt=0.0)  # IndexTTS2 infer_v2 cuts prompts to 15 s
    same_emotion: Literal["no", "prefer", "require"] = "no"
    single_utterance: Literal["reject", "self"] = "reject"
    seed: int = 0


class DataConfig(StrictModel):
    """Manifest → validated, paired, featurised Parquet shards (`indextts-ray prepare`)."""

    manifest: str | None = None
    format: Literal["auto", "jsonl", "melotts", "indextts_precomputed"] = "auto"
    root: str | None = None  # dataset root; None = the manifest's folder
    output_dir: str = "prepared"

    # audio: files at another rate than `sample_rate` are resampled and counted; under `min_sample_rate` rejected
    sample_rate: int = Field(24_000, gt=0)
    feature_sample_rate: Literal[16_000] = 16_000
    min_sample_rate: int = Field(16_000, gt=0)
    min_duration: float = Field(0.5, ge=0.0)
    max_duration: float = Field(36.0, gt=0.0)  # 36 s ≈ 1815 codes at 50 Hz (official max_mel_tokens)
    duration_tolerance: float | None = Field(0.5, ge=0.0)  # |declared - decoded| seconds; None = no check
    silence_dbfs: float = Field(-60.0, lt=0.0)  # whole-file RMS below this = silent
    clip_level: float = Field(0.999, gt=0.0, le=1.0)
    # clipping = flat tops: runs of >= clip_run equal samples at or above clip_level (single full-scale peaks
    # of loud clean speech are not clipping); rejected when more than max_clip_fraction of the samples are in them
    clip_run: int = Field(3, ge=1)
    max_clip_fraction: float = Field(0.001, ge=0.0, le=1.0)

    # text: normalised to spoken form (`text`), then BPE; None = the model's max_text_tokens
    text: TextConfig = TextConfig()
    # accepted row languages (rows in others are rejected as unknown_language); None = those the text front end
    # knows (ko, en, zh). Any code may be listed: languages without rules get the cleanup only.
    languages: list[str] | None = None
    max_text_tokens: int | None = Field(None, gt=0)
    tokenizer: str | None = None  # SentencePiece bpe.model; None = train one on this manifest into output_dir
    tokenizer_vocab_size: int = Field(12_000, ge=8)

    split: SplitConfig = SplitConfig()
    prompt: PromptConfig = PromptConfig()
    features: FeaturesConfig = FeaturesConfig()

    # shards: a shard closes at `shard_rows` rows or at ~`shard_mb` MiB (estimated from durations beforehand,
    # so the plan, and with it resume, is fixed before any audio is read)
    shard_rows: int = Field(2000, gt=0)
    shard_mb: float = Field(512.0, gt=0.0)

    # processes for the metadata scan (the manifest is read in ~8 MiB ranges of whole lines); 1 = in this
    # process. Same result either way.
    scan_workers: int = Field(2, ge=1)
    # Ray Data workers for the audio/feature stage; 0 = no Ray, shards written one by one in this process
    # (small corpora, debugging; the shards are byte-identical either way)
    workers: int = Field(2, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.min_duration >= self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} must be < max_duration {self.max_duration}")
        if self.min_sample_rate > self.sample_rate:
            raise ValueError(f"min_sample_rate {self.min_sample_rate} must be <= sample_rate {self.sample_rate}")
        return self
