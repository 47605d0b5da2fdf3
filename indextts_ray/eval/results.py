"""What an evaluation produces, shared by `evaluate.py` (computes it) and `report.py` (writes it), so neither
imports the other's module for the types."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indextts_ray.eval.embed import ClipEmbeddings
from indextts_ray.eval.emotion_control import EmotionControlOptions, EmotionControlResult
from indextts_ray.eval.probes import ProbeResult

PROBES = ("emotion_from_emovec", "speaker_from_emovec", "speaker_from_latents")
PROBE_TITLES = {
    "emotion_from_emovec": "emotion ← emotion vector",
    "speaker_from_emovec": "speaker ← emotion vector",
    "speaker_from_latents": "speaker ← speaker latents",
}
DEFAULT_BAND = (0.30, 0.60)  # train.band.low/high defaults (train/robust_config.py::BandControlConfig)


@dataclass(frozen=True)
class EvalOptions:
    """Args: max_items held-out rows; seed for the row sample, probe splits and sampling; batch_size for the
    loss and embedding passes; n_prompts rows for the sampling sanity check; device `auto` = cuda when present;
    emotion_control: the emotion-controlled generation evaluation (None = off); probe_splits: probe every
    stored utterance of these splits (its own features, at most max_probe_clips, seeded) instead of the
    held-out rows' prompts, so that the probes' test sets are large enough to judge their goals."""

    max_items: int = 400
    seed: int = 0
    batch_size: int = 8
    n_prompts: int = 8
    test_fraction: float = 0.3
    min_per_class: int = 3
    device: str = "auto"
    emotion_control: EmotionControlOptions | None = None
    probe_splits: tuple[str, ...] = ()
    max_probe_clips: int = 4000


@dataclass
class StageResult:
    name: str
    export_dir: Path
    n_rows: int
    losses: dict[str, float]
    probes: dict[str, ProbeResult | None]
    sampling: dict[str, dict]
    embeddings: ClipEmbeddings
    emotion_labels: list[str]
    curves: dict[int, dict] = field(default_factory=dict)  # the run's metrics.jsonl, {step: metrics}
    band: tuple[float, float] = DEFAULT_BAND
    emotion_control: EmotionControlResult | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name, "export_dir": str(self.export_dir), "n_rows": self.n_rows,
            "n_clips": len(self.embeddings.clip_ids), "losses": self.losses,
            "probes": {k: (v.to_json() if v is not None else None) for k, v in self.probes.items()},
            "sampling": self.sampling,
            "emotion_control": self.emotion_control.to_json() if self.emotion_control else None,
        }  # fmt: skip


def flat_metrics(results: list[StageResult]) -> dict[str, float | None]:
    """`<stage>/<metric>` numbers (pipeline receipts, job logs)."""
    out: dict[str, float | None] = {}
    for r in results:
        out[f"{r.name}/val_loss"] = r.losses["val_loss"]
        for key in PROBES:
            p = r.probes[key]
            out[f"{r.name}/{key}"] = p.accuracy if p else None
        if "greedy" in r.sampling:
            out[f"{r.name}/stop_rate"] = r.sampling["greedy"]["stop_rate"]
        for mode, m in (r.emotion_control.modes if r.emotion_control else {}).items():
            out[f"{r.name}/emotion_control_{mode}_accuracy"] = m.emotion.accuracy if m else None
            out[f"{r.name}/emotion_control_{mode}_speaker_agreement"] = m.speaker_agreement if m else None
    return out
