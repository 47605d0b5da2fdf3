"""Early stopping on a validation metric (lower is better): stop after `patience` evaluations without a gain.

An evaluation improves when `value < best - min_delta`; anything else, a non-finite value included, counts
as one evaluation without improvement. The decision depends only on the sequence of values, which are
reduced over ranks before they get here, so every rank stops at the same step.
"""

from __future__ import annotations

import math

from indextts_ray.train.robust_config import EarlyStoppingConfig

__all__ = ["EarlyStopping", "EarlyStoppingConfig"]


class EarlyStopping:
    """Tracks the best value and the evaluations since it; `update` says when to stop."""

    def __init__(self, cfg: EarlyStoppingConfig):
        self.cfg = cfg
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_at: int | None = None  # step of the stop decision; kept so a resumed run ends at once

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def update(self, step: int, value: float) -> bool:
        """Record the metric of the evaluation at `step`; True when training should stop now."""
        value = float(value)
        if math.isfinite(value) and (self.best is None or value < self.best - self.cfg.min_delta):
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        if self.cfg.enabled and self.stopped_at is None and self.bad_evals >= self.cfg.patience:
            self.stopped_at = step
        return self.cfg.enabled and self.stopped

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        try:
            self.best = state.pop("best")
            self.best_step = state.pop("best_step")
            self.bad_evals = int(state.pop("bad_evals"))
            self.stopped_at = state.pop("stopped_at")
        except KeyError as e:
            raise ValueError(f"early stopping state: missing key {e}") from None
        if state:
            raise ValueError(f"early stopping state: unexpected keys {sorted(state)}")
