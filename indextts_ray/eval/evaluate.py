"""Evaluate exported checkpoints on the held-out set and write the report.

For each export (an `export_checkpoint` directory, e.g. `runs/stage2/final`):

    the run's validation plan --train/validation.py--> val_loss, val_text_loss, val_mel_top1 (as logged)
    prompt clips --conditioners--> emotion vector, mean speaker latent --probes--> emotion <- emo vec,
                                                                                  speaker <- emo vec,
                                                                                  speaker <- speaker latent
    first n_prompts rows --generate_codes--> stop rate, length ratio (greedy, top-p)
    with `emotion_control`: emotion label / another speaker's clip --generate_codes--> code-space judges
                            (emotion_control.py; judges and design built once, shared by every export)

Every export sees the same rows and clips, so the stages are comparable side by side. The training curves
come from the export's run directory (`<export>/../metrics.jsonl`, `config.resolved.yaml` for the band).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from indextts_ray import storage
from indextts_ray.config import load_config
from indextts_ray.errors import DataError
from indextts_ray.eval.embed import embed_clips
from indextts_ray.eval.emotion_control import (
    EmotionControlSetup,
    build_setup,
    control_summary,
    run_emotion_control,
)
from indextts_ray.eval.heldout import prompt_clips, sample_rows, split_clips
from indextts_ray.eval.losses import run_config, validation_losses
from indextts_ray.eval.probes import linear_probe
from indextts_ray.eval.report import write_report
from indextts_ray.eval.results import (  # noqa: F401 -- flat_metrics, PROBE_TITLES: re-exported for callers
    DEFAULT_BAND,
    PROBE_TITLES,
    PROBES,
    EvalOptions,
    StageResult,
    flat_metrics,
)
from indextts_ray.eval.sanity import sampling_sanity
from indextts_ray.model.checkpoint_io import load_export
from indextts_ray.model.config import ModelConfig
from indextts_ray.model.training import TrainingModel

log = logging.getLogger("indextts_ray.eval")

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_history(export_dir: Path) -> tuple[dict[int, dict], tuple[float, float]]:
    """The training metrics and Stage-2 band of the run an export came from (empty / default when absent)."""
    from indextts_ray.train.tracking import read_metrics

    run_dir = Path(export_dir).parent
    band = DEFAULT_BAND
    resolved = run_dir / "config.resolved.yaml"
    if resolved.is_file():
        b = ((yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}).get("train") or {}).get("band") or {}
        band = (float(b.get("low", band[0])), float(b.get("high", band[1])))
    return read_metrics(run_dir), band


def emotion_setup(export_dir: str | Path, data_dir: str | Path, options: EvalOptions) -> EmotionControlSetup:
    """The emotion-control judges and design for `data_dir`, with the labels and code vocabulary of an export."""
    cfg = load_config(Path(export_dir) / "model_config.yaml", schema=ModelConfig)
    if options.emotion_control.max_codes > cfg.max_mel_tokens:
        raise DataError(f"emotion control: max_codes {options.emotion_control.max_codes} exceeds the model's "
                        f"max_mel_tokens {cfg.max_mel_tokens} ({export_dir}); lower --emotion-max-codes")
    return build_setup(data_dir, list(cfg.emotion_labels), cfg.number_mel_codes, options.emotion_control,
                       seed=options.seed, test_fraction=options.test_fraction, min_per_class=options.min_per_class,
                       device=resolve_device(options.device))


def evaluate_export(export_dir: str | Path, data_dir: str | Path, name: str,
                    options: EvalOptions = EvalOptions(), setup: EmotionControlSetup | None = None) -> StageResult:
    """All metrics of one export on the held-out set (module doc). `setup`: the emotion-control judges and design
    to share between exports (built here when emotion control is on and none is given)."""
    export_dir, data_dir = Path(export_dir), storage.pathlike(data_dir)  # data may be on an object store
    device = resolve_device(options.device)
    loaded = load_export(export_dir, device=device)
    tm = loaded if isinstance(loaded, TrainingModel) else TrainingModel(loaded.cfg, 0, model=loaded).to(device)
    uv, cfg = tm.model, tm.cfg
    rows = sample_rows(data_dir, options.max_items, options.seed)
    if len(rows) == 0:
        raise DataError(f"{data_dir / 'val'}: no held-out rows to evaluate on")
    dim = int(rows.column("feat_dim")[0].as_py())
    if dim != cfg.input_dim:
        raise DataError(f"{data_dir}: features are {dim}-dim, {export_dir} expects model.input_dim={cfg.input_dim}; "
                        "prepare the data for this model")
    losses = validation_losses(tm, data_dir, device, run_config(export_dir))  # = the run's logged val_loss
    clips = split_clips(data_dir, options.probe_splits, options.max_probe_clips, options.seed) \
        if options.probe_splits else prompt_clips(rows, data_dir)
    emb = embed_clips(uv, clips, device, options.batch_size)
    labels = list(cfg.emotion_labels)
    known = emb.emotion_ids >= 0
    emotion_names = [labels[i] if 0 <= i < len(labels) else str(i) for i in emb.emotion_ids[known]]
    kw = {"seed": options.seed, "test_fraction": options.test_fraction, "min_per_class": options.min_per_class}
    probes = {
        "emotion_from_emovec": linear_probe(emb.emo_vec[known], emotion_names, label_order=labels, **kw),
        "speaker_from_emovec": linear_probe(emb.emo_vec, emb.speakers, **kw),
        "speaker_from_latents": linear_probe(emb.speaker_latent, emb.speakers, **kw),
    }
    sampling = sampling_sanity(uv, rows.slice(0, options.n_prompts), device)
    curves, band = run_history(export_dir)
    control = None
    if options.emotion_control is not None:
        setup = setup or emotion_setup(export_dir, data_dir, options)
        if not set(setup.labels) <= set(labels):
            raise DataError(f"{export_dir}: emotion labels {labels} do not contain {setup.labels} of the first export")
        table = loaded.heads.emotion_table if isinstance(loaded, TrainingModel) else None
        control = run_emotion_control(uv, table, setup, options.emotion_control, device, options.seed)
    result = StageResult(name, export_dir, len(rows), losses, probes, sampling, emb, labels, curves, band, control)
    log.info("eval %s: %s", name, summary_line(result))
    return result


def summary_line(r: StageResult) -> str:
    parts = [f"val_loss {r.losses['val_loss']:.3f}", f"top1 {r.losses['val_mel_top1']:.3f}"]
    for key in PROBES:
        p = r.probes[key]
        parts.append(f"{key} " + (f"{p.accuracy:.2f} (chance {p.chance:.2f})" if p else "n/a"))
    greedy = r.sampling.get("greedy")
    if greedy:
        parts.append(f"stop {greedy['stop_rate']:.2f} ratio {greedy['length_ratio_mean']:.2f}")
    if r.emotion_control is not None:
        parts.append(control_summary(r.emotion_control))
    return " | ".join(parts)


def stage_names(exports: list[Path]) -> list[str]:
    """A readable unique name per export: `runs/stage2/final` -> `stage2`, other dirs their own name."""
    names = []
    for p in exports:
        p = Path(p).absolute()
        base = p.parent.name if p.name in ("final", "best") or p.name.startswith("step-") else p.name
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def evaluate_and_report(exports: dict[str, Path], data_dir: str | Path, out_dir: str | Path,
                        options: EvalOptions = EvalOptions()) -> dict:
    """Evaluate every export ({name: dir}, in stage order) and write the report into `out_dir` (atomically).

    Returns the report's JSON (`report.json`): per-stage metrics and the goal checks.
    """
    if not exports:
        raise DataError("no exports to evaluate")
    for name, d in exports.items():
        if not (Path(d) / "model_config.yaml").is_file():
            raise DataError(f"{d}: not an export directory (no model_config.yaml) for {name}; "
                            "pass a run's `final` directory or an `indextts-ray export` output")
    setup = emotion_setup(next(iter(exports.values())), data_dir, options) if options.emotion_control else None
    results = [evaluate_export(d, data_dir, name, options, setup) for name, d in exports.items()]
    return write_report(results, Path(out_dir), data_dir=storage.pathlike(data_dir), options=options)


def probe_accuracy(r: StageResult, key: str) -> float:
    p = r.probes.get(key)
    return p.accuracy if p is not None else float(np.nan)
