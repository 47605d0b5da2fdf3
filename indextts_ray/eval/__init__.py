"""Evaluation: code generation with a KV cache, held-out losses, disentanglement probes, the stage report.

    generate.py   (prompt, emotion, text) -> codes; greedy / top-k / top-p, stop token, limits, KV cache
    heldout.py    the seeded held-out rows and the prompt clips the probes use
    losses.py     val mel/text loss and mel top-1 (TrainingModel.forward)
    embed.py      per-clip emotion vector and mean speaker latent
    probes.py     logistic-regression probes with chance levels, per-class accuracy, confusion
    sanity.py     stop rate and length ratio of generated codes
    codeclf.py    small code-space classifiers (emotion / speaker from semantic codes) with held-out accuracy
    emotion_control.py   codes generated per emotion label / another speaker's clip, judged by those classifiers
    evaluate.py   one export -> StageResult; several exports -> report (`evaluate_and_report`)
    plots.py / report.py   PNGs, report.md / report.html / report.json, written atomically
"""

from indextts_ray.eval.emotion_control import EmotionControlOptions, build_setup, run_emotion_control
from indextts_ray.eval.evaluate import EvalOptions, StageResult, evaluate_and_report, evaluate_export
from indextts_ray.eval.generate import (
    Generated,
    SamplingConfig,
    blend_emovec,
    build_conditioning,
    generate_codes,
    label_emovec,
    resolve_emovec,
)
from indextts_ray.eval.probes import ProbeResult, linear_probe

__all__ = [
    "EmotionControlOptions", "build_setup", "run_emotion_control", "EvalOptions", "StageResult", "evaluate_and_report", "evaluate_export", "Generated", "SamplingConfig",
    "blend_emovec", "build_conditioning", "generate_codes", "label_emovec", "resolve_emovec", "ProbeResult",
    "linear_probe",
]
