"""What may change when a run resumes, and what may not: the checkpoint's resolved config against this one.

Checked in the driver before Ray starts (`trainer.run_training`), so a refusal is one line and no worker group
is started (a worker error would be retried). Settings that define the data plan (which rows, in which
batches, with which prompts, in which order, and where a step ends) cannot change under a saved data position:
the position would point into another plan and silently skip or repeat rows. The architecture and the
trainable set cannot change under saved weights and optimizer state. Anything else (schedule length, lr,
logging, eval/checkpoint cadence, λ/weight, guard, EMA, early stopping, ...) is taken from this config and
logged.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from indextts_ray.config import Config
from indextts_ray.errors import UserError

# dotted config paths (a path covers everything under it) -> what a change breaks
FIXED = {
    "train.batch.max_tokens": "the data plan",
    "train.batch.max_batch_size": "the data plan",
    "train.batch.shuffle_window": "the data plan",
    "train.data_dir": "the data plan",
    "train.mixture": "the data plan",
    "train.only_mapped_speakers": "the data plan",
    "train.emotion_reference": "the emotion references of the data plan",
    "train.speaker_mapping": "the data plan and the speaker classifier",
    "run.seed": "the data plan",
    "data.prompt": "the prompts of the data plan",
    "model": "the architecture of the saved weights",
    "train.freeze": "the trainable parameters of the saved optimizer state",
    "train.stage": "the stage the checkpoint belongs to",
}


def config_changes(saved: dict, current: dict, prefix: str = "") -> dict[str, tuple]:
    """{dotted path: (saved value, current value)} of every leaf that differs (lists compare whole)."""
    out = {}
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, path + "."))
        elif a != b:
            out[path] = (a, b)
    return out


def check_resume_config(saved: dict, cfg: Config, run_dir: Path, checkpoint: str = "") -> list[str]:
    """Refuse (UserError, one line) a change that the saved run cannot follow; return the other changes.

    Args:
        saved: the checkpoint's resolved config (JSON dict).
        cfg: this run's config (absolute paths, as the driver resolved them).
        run_dir, checkpoint: for the message.
    """
    with contextlib.suppress(ValueError):  # fields added to the schema since: their defaults, not "changed"
        saved = Config.model_validate(saved).model_dump(mode="json")
    changes = config_changes(saved, cfg.model_dump(mode="json"))
    where = f"{run_dir} (checkpoint {checkpoint})" if checkpoint else str(run_dir)
    fix = _fix(run_dir)
    for path, (old, new) in changes.items():
        what = next((v for k, v in FIXED.items() if path == k or path.startswith(k + ".")), None)
        if what is not None:
            raise UserError(f"{where}: {path} changed since the checkpoint ({_short(old)} -> {_short(new)}), which "
                            f"changes {what}: {fix}")
    # micro-batches per optimizer step over all ranks: where a step (and the saved data position) ends
    old_micro, new_micro = _global_micro(saved), cfg.train.scaling.max_workers * cfg.train.batch.grad_accum
    if old_micro != new_micro:
        raise UserError(f"{where}: train.batch.grad_accum x the largest train.scaling.num_workers changed since the "
                        f"checkpoint ({old_micro} -> {new_micro} micro-batches per step), which changes where the saved "
                        f"data position ends a step: {fix}")
    return [f"{path} {_short(old)} -> {_short(new)}" for path, (old, new) in changes.items()]


def _global_micro(saved: dict) -> int:
    n = saved["train"]["scaling"]["num_workers"]
    return (n if isinstance(n, int) else max(n)) * saved["train"]["batch"]["grad_accum"]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(run_dir: Path, cfg: Config, spec=None) -> list[str]:
    """The run's newest checkpoint (none: nothing to check), read once: its data fingerprint against `spec`
    (the run's `IngestSpec`, when given) and `check_resume_config` against `cfg`. Returns the applied changes."""
    from indextts_ray import storage
    from indextts_ray.data.ingest import check_same_data
    from indextts_ray.train.export import latest_checkpoint, saved_summary

    try:
        ckpt = latest_checkpoint(run_dir)
    except UserError:
        return []
    summary = saved_summary(ckpt)  # summary.json: the run state and config, not the weights
    progress, saved = summary["progress"], summary["config"]
    if spec is not None:
        try:
            check_same_data(progress.get("data") or None, spec)
        except UserError as e:
            raise UserError(f"{run_dir} (checkpoint {storage.name(ckpt)}): {e}; {_fix(run_dir)}") from None
    return check_resume_config(saved, cfg, run_dir, storage.name(ckpt))


def _fix(run_dir: Path | str) -> str:
    return (f"start a new run (another run.name), or rerun with --restart (deletes {run_dir}) to train from "
            "step 0")


def restart_run(run_dir: Path | str) -> bool:
    """Delete a run folder (or a run's objects on a store) so the run starts from step 0 (`indextts-ray train
    --restart`). Refuses a folder that does not look like a run (so a mistyped run.output_dir/run.name cannot
    delete anything else). True when something was deleted."""
    from indextts_ray import storage

    entries = storage.listdir(run_dir)  # a store has no empty folders: no entries = no run
    if not entries and (storage.is_remote(run_dir) or not storage.exists(run_dir)):
        return False
    markers = ("config.resolved.yaml", "checkpoint_manager_snapshot.json", "metrics.jsonl", "finished.json")
    if entries and not any(m in entries for m in markers):
        raise UserError(f"--restart: {run_dir} is not a training run folder (none of {', '.join(markers)}); "
                        "check run.output_dir and run.name")
    storage.delete(run_dir)
    return True
