"""Loss-spike guard: skip optimizer steps whose loss or gradient norm is non-finite or far above normal.

Per optimizer step, after `scaler.unscale_` and `clip_grad_norm_` (which returns the pre-clip norm):

    verdict = guard.check(loss, grad_norm)    # pure: compares with the running means, changes nothing
    if verdict.ok:   scaler.step(opt); scaler.update(); scheduler.step(); step += 1   # as without a guard
    else:            discard_step(opt, scaler); record_bad_batch(...)                 # step and LR stay
    guard.commit(verdict)                     # accepted steps feed the running means; skips are counted
    if guard.needs_reload: factor = guard.begin_reload(); restore the last good checkpoint;
                           set_base_lrs(opt, scheduler, [b * factor for b in bases_before_restore])

A skipped step leaves weights, optimizer moments, LR schedule and GradScaler exactly as they were, so a
run that skips a bad batch ends bit-identical to a run that never saw it (tests/train/test_guard.py).

`loss` must be the same number on every rank (the mean over ranks), so every rank takes the same decision
from the same state; the gradient norm already is (it is computed on all-reduced gradients).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indextts_ray.train.robust_config import SpikeGuardConfig

if TYPE_CHECKING:  # annotations only: the functions below just call optimizer/scaler methods
    import torch

__all__ = ["DivergenceError", "SpikeGuard", "SpikeGuardConfig", "Verdict", "discard_step", "record_bad_batch",
           "set_base_lrs"]


class DivergenceError(RuntimeError):
    """Training keeps producing bad steps even after `max_reloads` reloads with a lower learning rate."""


# reasons of a Verdict; only those in SKIP_REASONS skip the step
OK, FP16_OVERFLOW = "ok", "fp16_overflow"
SKIP_REASONS = ("nonfinite_loss", "nonfinite_grad", "loss_spike", "grad_spike")


@dataclass(frozen=True)
class Verdict:
    ok: bool  # True: step the optimizer as usual
    reason: str  # "ok", "fp16_overflow" (ok: the GradScaler skips it itself) or one of SKIP_REASONS
    loss: float
    grad_norm: float
    loss_limit: float | None  # None while warming up or disabled
    grad_limit: float | None


class SpikeGuard:
    """Running means of accepted losses and gradient norms; judges each step against them.

    Args:
        cfg: the thresholds.
        fp16_scaler: True when a GradScaler with fp16 runs. A non-finite gradient with a finite loss is then
            an fp16 overflow, which the scaler already skips while lowering its scale; the guard lets it
            through (reason "fp16_overflow") because skipping it would leave the scale too high forever.
    """

    def __init__(self, cfg: SpikeGuardConfig, fp16_scaler: bool = False):
        self.cfg = cfg
        self.fp16_scaler = fp16_scaler
        self.loss_mean: float | None = None
        self.grad_mean: float | None = None
        self.observed = 0  # accepted steps folded into the means
        self.consecutive = 0  # skips since the last accepted step
        self.skipped = 0
        self.overflows = 0
        self.reloads = 0
        self.lr_scale = 1.0  # product of the reload factors applied so far (for logs)
        self.reasons: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)

    def check(self, loss: float, grad_norm: float) -> Verdict:
        """Judge one optimizer step; does not change the guard (call `commit` with the result)."""
        loss, grad_norm = float(loss), float(grad_norm)
        judging = self.cfg.enabled and self.observed >= self.cfg.warmup_steps and self.loss_mean is not None
        loss_limit = self.cfg.loss_factor * self.loss_mean if judging else None
        grad_limit = self.cfg.grad_factor * self.grad_mean if judging else None

        def verdict(reason: str) -> Verdict:
            return Verdict(reason in (OK, FP16_OVERFLOW), reason, loss, grad_norm, loss_limit, grad_limit)

        if not self.cfg.enabled:
            return verdict(OK)
        if not math.isfinite(loss):
            return verdict("nonfinite_loss")
        if not math.isfinite(grad_norm):
            return verdict(FP16_OVERFLOW if self.fp16_scaler else "nonfinite_grad")
        if loss_limit is not None and loss > loss_limit:
            return verdict("loss_spike")
        if grad_limit is not None and grad_norm > grad_limit:
            return verdict("grad_spike")
        return verdict(OK)

    def commit(self, verdict: Verdict) -> None:
        """Apply a verdict: an accepted step updates the running means; a skip is counted."""
        if not verdict.ok:
            self.skipped += 1
            self.consecutive += 1
            self.reasons[verdict.reason] += 1
            return
        if verdict.reason == FP16_OVERFLOW:  # the scaler skipped it: no information about the loss scale
            self.overflows += 1
            return
        self.consecutive = 0
        d = self.cfg.decay
        self.loss_mean = verdict.loss if self.loss_mean is None else d * self.loss_mean + (1 - d) * verdict.loss
        self.grad_mean = verdict.grad_norm if self.grad_mean is None else d * self.grad_mean + (1 - d) * verdict.grad_norm
        self.observed += 1

    @property
    def needs_reload(self) -> bool:
        return self.cfg.enabled and self.consecutive >= self.cfg.max_consecutive_skips

    def begin_reload(self) -> float:
        """Count a reload and return the factor for the learning rate; past `max_reloads`, raise."""
        if self.reloads >= self.cfg.max_reloads:
            raise DivergenceError(
                f"{self.consecutive} consecutive bad steps after {self.reloads} reload(s) with the learning rate "
                f"scaled to {self.lr_scale:g}x; last skip reasons {self.reasons}. Inspect the bad batches file, "
                "lower train.lr or raise train.guard.max_reloads")
        self.reloads += 1
        self.consecutive = 0
        self.lr_scale *= self.cfg.reload_lr_factor
        return self.cfg.reload_lr_factor

    def metrics(self) -> dict[str, float]:
        """Counters for the metrics line / TensorBoard."""
        return {"skipped_steps": self.skipped, "guard_reloads": self.reloads, "fp16_overflows": self.overflows,
                "lr_scale": self.lr_scale}

    def state_dict(self) -> dict:
        """JSON-able; goes into the checkpoint so a resumed run judges with the same running means."""
        return {"loss_mean": self.loss_mean, "grad_mean": self.grad_mean, "observed": self.observed,
                "consecutive": self.consecutive, "skipped": self.skipped, "overflows": self.overflows,
                "reloads": self.reloads, "lr_scale": self.lr_scale, "reasons": dict(self.reasons)}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        try:
            self.loss_mean = state.pop("loss_mean")
            self.grad_mean = state.pop("grad_mean")
            self.observed = int(state.pop("observed"))
            self.consecutive = int(state.pop("consecutive"))
            self.skipped = int(state.pop("skipped"))
            self.overflows = int(state.pop("overflows"))
            self.reloads = int(state.pop("reloads"))
            self.lr_scale = float(state.pop("lr_scale"))
            reasons = dict(state.pop("reasons"))
        except KeyError as e:
            raise ValueError(f"spike guard state: missing key {e}") from None
        if state:
            raise ValueError(f"spike guard state: unexpected keys {sorted(state)}")
        if set(reasons) != set(SKIP_REASONS):
            raise ValueError(f"spike guard state: reasons {sorted(reasons)} != {sorted(SKIP_REASONS)}")
        self.reasons = {k: int(v) for k, v in reasons.items()}


def discard_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Drop this step's gradients without touching weights, optimizer state, scale or its growth tracker.

    `scaler.unscale_` already ran (for the grad norm); its per-step bookkeeping must be cleared or the next
    `unscale_` raises. `update(new_scale=current)` clears it and keeps the scale and growth tracker as they are.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler.is_enabled():
        scaler.update(new_scale=scaler.get_scale())


def set_base_lrs(optimizer: torch.optim.Optimizer, scheduler, base_lrs: list[float]) -> None:
    """Give a LambdaLR schedule new base learning rates (kept in its state_dict, so resume keeps them).

    The current lr of each group is rescaled by the same ratio, so the very next step already uses it.
    """
    old = list(scheduler.base_lrs)
    if len(base_lrs) != len(old) or len(base_lrs) != len(optimizer.param_groups):
        raise ValueError(f"{len(base_lrs)} base lrs for {len(optimizer.param_groups)} param groups")
    for group, new, before in zip(optimizer.param_groups, base_lrs, old):
        group["lr"] = group["lr"] * (new / before)
        group["initial_lr"] = new
    scheduler.base_lrs = list(base_lrs)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def record_bad_batch(path: Path, *, step: int, ids: list[str], verdict: Verdict, **context) -> None:
    """Append one JSON line (step, reason, loss, grad norm, limits, sample ids, context) to `path`."""
    fields = {**asdict(verdict), **context}
    row = {"step": step, **{k: _json_value(v) for k, v in fields.items()}, "ids": list(ids)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _json_value(v):
    """JSON has no NaN/Infinity: write non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v
