"""Rank-0 metrics: one parseable console line, TensorBoard scalars, wandb (offline unless configured)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger("indextts_ray.train")

# Dense bf16/fp16 tensor peak (fp32 accumulate), TFLOP/s per device.
PEAK_TFLOPS = {
    "RTX 4090": 165.2,
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "RTX 3090": 71.0,
    "A6000": 154.8,
}

# Console/report names -> the seed recipe's TensorBoard tags.
TB_TAGS = {
    "loss": "train/loss",
    "mel_loss": "train/mel_loss",
    "text_loss": "train/text_loss",
    "mel_top1": "train/mel_top1",
    "speaker_loss": "train/speaker_loss",
    "speaker_acc": "train/speaker_acc",
    "band_acc": "train/band_acc",
    "emotion_loss": "train/emotion_loss",
    "emotion_acc": "train/emotion_acc",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "padding": "perf/padding",
    "data_wait": "perf/data_wait",
    "grl_lambda": "train/grl_lambda",
    "speaker_weight": "train/speaker_weight",
    "skipped_steps": "guard/skipped_steps",
    "guard_reloads": "guard/reloads",
    "fp16_overflows": "guard/fp16_overflows",
    "lr_scale": "guard/lr_scale",
    "val_loss": "val/mel_loss",
    "val_mel_top1": "val/mel_top1",
    "val_text_loss": "val/text_loss",
}


def tb_tag(key: str) -> str | None:
    """The TensorBoard tag of a metric: the seed's names, per-dataset mixture metrics as they are, else None."""
    return TB_TAGS.get(key) or (key if key.startswith("mix/") else None)


def device_peak_tflops(device: torch.device, configured: float | None) -> float | None:
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def read_metrics(run_dir: Path | str) -> dict[int, dict]:
    """metrics.jsonl as {step: metrics}, the last entry of a step winning (steps replayed after a restart).
    `run_dir` may be a URI (a run on an object store: the file as of its last checkpoint)."""
    from indextts_ray import storage

    out: dict[int, dict] = {}
    path = storage.join(run_dir, "metrics.jsonl")
    if storage.is_file(path):
        for line in storage.read_text(path).splitlines():
            m = json.loads(line)
            out.setdefault(m["step"], {}).update(m)
    return out


def format_eta(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_line(m: dict, total: int | None = None, eta_s: float | None = None) -> str:
    """`step 1200/5000 eta 1h02m | loss 2.314 (text 0.41 mel 1.90) | top1 0.52 | lr 3.0e-04 | ...` (STYLE.md §8)."""
    parts = [
        f"step {m['step']}" + (f"/{total}" if total else "") + (f" eta {format_eta(eta_s)}" if eta_s is not None else ""),
        f"loss {m['loss']:.3f} (text {m['text_loss']:.2f} mel {m['mel_loss']:.2f})",
        f"top1 {m['mel_top1']:.3f}",
    ]
    if m.get("speaker_weight", 0) > 0:
        parts.append(f"spk {m['speaker_loss']:.2f}/{m['speaker_acc']:.2f} λ {m['grl_lambda']:.2f}")
    parts += [
        f"lr {m['lr']:.1e}",
        f"gnorm {m['grad_norm']:.2f}",
        f"tok/s {m['tokens_per_s']:,.0f}",
        f"mfu {m['mfu'] * 100:.1f}%" if m.get("mfu") is not None else "mfu n/a",
        f"pad {m['padding'] * 100:.1f}%",
        f"wait {m['data_wait'] * 100:.0f}%",
        f"{m['step_ms']:.0f}ms",
    ]
    return " | ".join(parts)


def wandb_identity(run_dir: Path, run_name: str, config: dict) -> dict:
    """wandb id/group/job type: the id is unique per (run dir, config) and stable across resumes and restarts,
    so two experiments synced to one project never merge; the group is the runs folder (one pipeline's stages
    share `<work_dir>/runs`), the job type the stage."""
    run_dir = Path(run_dir).absolute()
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{run_dir}\n{blob}".encode()).hexdigest()[:12]
    runs = run_dir.parent
    group = f"{runs.parent.name or runs.name}-{hashlib.sha256(str(runs).encode()).hexdigest()[:6]}"
    stage = (config.get("train") or {}).get("stage")
    return {"id": f"{run_name}-{digest}", "name": run_name, "group": group,
            "job_type": f"stage{stage}" if stage is not None else "train"}


class Tracker:
    """Created on every rank; only rank 0 writes anything."""

    def __init__(self, rank: int, run_dir: Path, run_name: str, config: dict, settings):
        self.active = rank == 0
        self.tb = self.wandb = None
        # console ETA: steps/s since the first logged step of this process (a resumed run starts its own clock)
        self.total = (config.get("train") or {}).get("max_steps")
        self._t0: tuple[float, int] | None = None
        if not self.active:
            return
        # every logged step, appended: plots, eval reports and resume checks read it (a replayed step after a
        # restart appears again; readers keep the last entry per step)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if settings.wandb and settings.wandb_mode != "disabled":
            os.environ.setdefault("WANDB_MODE", settings.wandb_mode)
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=settings.wandb_project, resume="allow", dir=str(run_dir), config=config,
                mode=os.environ["WANDB_MODE"], **wandb_identity(run_dir, run_name, config),
            )

    def log(self, metrics: dict, step: int, line: bool = True) -> None:
        if not self.active:
            return
        if line and "mel_loss" in metrics:
            total = metrics.get("total_steps") or self.total
            log.info(format_line(metrics, total, self.eta(step, total)))
        for k, v in metrics.items():
            tag = tb_tag(k)
            if self.tb is not None and tag is not None and v is not None:
                self.tb.add_scalar(tag, float(v), step)
        self.jsonl.write(json.dumps({k: v for k, v in metrics.items() if v is not None}) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log({TB_TAGS.get(k, k): v for k, v in metrics.items() if v is not None}, step=step)

    def eta(self, step: int, total: int | None, now: float | None = None) -> float | None:
        """Seconds left at the rate since this process's first logged step; None until a rate is known."""
        now = time.monotonic() if now is None else now
        if self._t0 is None:
            self._t0 = (now, step)
            return None
        t0, s0 = self._t0
        if not total or step <= s0:
            return None
        return (total - step) * (now - t0) / (step - s0)

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
