"""The in-loop Stage-2 band controller: speaker accuracy -> GRL λ and speaker-loss weight.

The seed recipe's manual rules (acc > 80 % -> raise λ; acc < 20 % -> raise the weight; diverging -> weight
0.05, λ 0.5, no AMP) as a deterministic controller whose whole state is a small JSON dict, so a resumed run
continues the same control.

Control law (every `update_every` steps, on the EMA `a` of speaker accuracy; [lo, hi] is the band moved
`margin` x its width inside each edge, because under drift a PI loop settles slightly past its target):

    e = a - hi   if a > hi              band error, 0 inside (a dead zone: no chatter)
        a - lo   if a < lo
        0        otherwise
    S = clamp(S + e, -(S_w + S_d), S_l)  one shared integral, clamped where the outputs saturate (anti-windup)
    log λ = log λ0 + max(0, kp_λ e + ki_λ S) + min(0, ki_λ (S + S_w))
    log w = log w0 + max(0, -(kp_w e + ki_w S))

A "split range" over S: S in (0, S_l] raises λ up to lambda_max (too much speaker information in the
emotion vector); S in [-S_w, 0) raises the weight up to weight_max (the classifier is losing); beyond -S_w,
with the weight exhausted, λ is lowered below its rest value down to lambda_min (the adversary is too strong
for any weight). S_l, S_w and S_d are the integrals at which those ranges saturate: log(lambda_max/λ0)/ki_λ,
log(weight_max/w0)/ki_w and log(λ0/lambda_min)/ki_λ. λ0 and w0 (rest values) are the configured λ and
weight, so control starts exactly from the config and gives its additions back as the error reverses.

A divergence (non-finite loss/accuracy, or loss > spike_factor x its
running mean) multiplies λ, weight and their rest values by `divergence_factor`, resets the integral and
the loss statistics, optionally disables AMP and sets `reload_requested` for that step.

The controller is pure (no logging, no torch): the loop feeds it rank-averaged numbers, so every rank
computes identical decisions, and logs the returned changes on rank 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from indextts_ray.train.robust_config import BandControlConfig

STATE_VERSION = 1


class DivergenceError(RuntimeError):
    """The run diverged more often than `band.max_divergences` allows."""


@dataclass(frozen=True)
class Change:
    """One value the controller changed, at which step and why.

    `name`: grl_lambda, speaker_weight, amp (1 -> 0 when a divergence turns it off) or divergences (the count,
    reported on every divergence).
    """

    step: int
    name: str
    old: float
    new: float
    reason: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.name} {self.old:.4g} -> {self.new:.4g} ({self.reason})"

    def to_dict(self) -> dict:
        return asdict(self)


class _Ema:
    """Bias-corrected exponential moving average with span `window` (window 1 = the last value)."""

    def __init__(self, window: int):
        self.beta = 1.0 - 2.0 / (window + 1)
        self.value = 0.0
        self.n = 0

    def add(self, x: float) -> None:
        self.value = self.beta * self.value + (1.0 - self.beta) * x
        self.n += 1

    @property
    def mean(self) -> float:
        return self.value / (1.0 - self.beta**self.n) if self.n else math.nan

    def reset(self) -> None:
        self.value, self.n = 0.0, 0


class BandController:
    """Moves GRL λ and the speaker-loss weight so that speaker accuracy stays inside [cfg.low, cfg.high].

    Args:
        cfg: the `train.band` section.
        grl_lambda: the configured λ (`train.grl_lambda`), the starting and rest value.
        speaker_weight: the configured weight (`train.loss.speaker`), the starting and rest value.
    """

    def __init__(self, cfg: BandControlConfig, grl_lambda: float, speaker_weight: float):
        self.cfg = cfg
        if cfg.enabled:
            for name, value, lo, hi in (("grl_lambda", grl_lambda, cfg.lambda_min, cfg.lambda_max),
                                        ("loss.speaker", speaker_weight, cfg.weight_min, cfg.weight_max)):
                if not lo <= value <= hi:
                    raise ValueError(f"band control: train.{name}={value} is outside its bounds [{lo}, {hi}] "
                                     "(set train.band.* bounds or disable it with train.band.enabled=false)")
        self._start = (float(grl_lambda), float(speaker_weight))  # what the config asked for
        self._lambda = self._lambda_rest = float(grl_lambda)
        self._weight = self._weight_rest = float(speaker_weight)
        self._acc = _Ema(cfg.window)
        self._loss = _Ema(cfg.loss_window)
        self._integral = 0.0
        self._last_update = 0  # step of the last control update
        self._divergences = 0
        self._amp_enabled = True
        self.reload_requested = False  # set by the update() that found a divergence; cleared by the next one

    # ---- what the loop reads

    @property
    def grl_lambda(self) -> float:
        return self._lambda

    @property
    def speaker_weight(self) -> float:
        return self._weight

    @property
    def amp_enabled(self) -> bool:
        """False once a divergence turned mixed precision off (with `disable_amp_on_divergence`)."""
        return self._amp_enabled

    @property
    def accuracy(self) -> float:
        """The smoothed speaker accuracy the controller acts on (NaN before the first step)."""
        return self._acc.mean

    # ---- the control step

    def update(self, step: int, speaker_acc: float, loss: float) -> list[Change]:
        """Feed one optimizer step's (rank-averaged) speaker accuracy and loss; return what changed.

        Call it every step: divergence is checked on every call, the PI law runs every `update_every` steps.
        Raises DivergenceError after more than `max_divergences` divergences.
        """
        self.reload_requested = False
        if not self.cfg.enabled:
            return []
        problem = self._divergence(speaker_acc, loss)
        if problem:
            return self._on_divergence(step, problem)
        self._acc.add(speaker_acc)
        self._loss.add(loss)
        if step - self._last_update < self.cfg.update_every:
            return []
        self._last_update = step
        return self._control(step)

    def _divergence(self, speaker_acc: float, loss: float) -> str | None:
        if not math.isfinite(loss) or not math.isfinite(speaker_acc):
            return f"loss {loss}, speaker_acc {speaker_acc}: not finite"
        if self._loss.n >= self.cfg.spike_after and loss > self.cfg.spike_factor * self._loss.mean:
            return f"loss {loss:.4g} > {self.cfg.spike_factor:g} x running mean {self._loss.mean:.4g}"
        return None

    def _on_divergence(self, step: int, problem: str) -> list[Change]:
        cfg = self.cfg
        self._divergences += 1
        if self._divergences > cfg.max_divergences:
            raise DivergenceError(f"step {step}: divergence #{self._divergences} ({problem}) exceeds "
                                  f"train.band.max_divergences={cfg.max_divergences}; lower train.lr?")
        reason = f"divergence #{self._divergences}: {problem}"
        old_l, old_w = self._lambda, self._weight
        self._lambda = self._lambda_rest = _clamp(old_l * cfg.divergence_factor, cfg.lambda_min, cfg.lambda_max)
        self._weight = self._weight_rest = _clamp(old_w * cfg.divergence_factor, cfg.weight_min, cfg.weight_max)
        # the control history belongs to the diverged trajectory; the loss level changes after a reload
        self._integral = 0.0
        self._loss.reset()
        self._last_update = step
        # the count comes first so that a divergence is reported even when λ/weight are already at their floor
        changes = [Change(step, "divergences", self._divergences - 1, self._divergences, reason),
                   *self._changes(step, old_l, old_w, reason)]
        if cfg.disable_amp_on_divergence and self._amp_enabled:
            self._amp_enabled = False
            changes.append(Change(step, "amp", 1.0, 0.0, reason))
        self.reload_requested = cfg.reload_on_divergence
        return changes

    def _control(self, step: int) -> list[Change]:
        cfg = self.cfg
        acc = self._acc.mean
        # aim inside the band, not at its edges: under drift a PI loop settles slightly past its target
        inset = cfg.margin * (cfg.high - cfg.low)
        lo, hi = cfg.low + inset, cfg.high - inset
        error = acc - hi if acc > hi else acc - lo if acc < lo else 0.0
        # anti-windup: the integral stops where it alone pins the last actuator of its side at a bound
        s_up = math.log(cfg.lambda_max / self._lambda_rest) / cfg.ki_lambda if cfg.ki_lambda else 0.0
        s_weight = math.log(cfg.weight_max / self._weight_rest) / cfg.ki_weight if cfg.ki_weight else 0.0
        s_down = math.log(self._lambda_rest / cfg.lambda_min) / cfg.ki_lambda if cfg.ki_lambda else 0.0
        s = self._integral = _clamp(self._integral + error, -(s_weight + s_down), s_up)
        log_lambda = max(0.0, cfg.kp_lambda * error + cfg.ki_lambda * s) + min(0.0, cfg.ki_lambda * (s + s_weight))
        log_weight = max(0.0, -(cfg.kp_weight * error + cfg.ki_weight * s))
        old_l, old_w = self._lambda, self._weight
        self._lambda = _clamp(self._lambda_rest * math.exp(log_lambda), cfg.lambda_min, cfg.lambda_max)
        self._weight = _clamp(self._weight_rest * math.exp(log_weight), cfg.weight_min, cfg.weight_max)
        where = "above" if error > 0 else "below" if error < 0 else "inside"
        reason = (f"speaker_acc {acc:.3f} (EMA) {where} target [{lo:.3f}, {hi:.3f}]: "
                  f"error {error:+.3f}, integral {self._integral:+.3f}")
        return self._changes(step, old_l, old_w, reason)

    def _changes(self, step: int, old_l: float, old_w: float, reason: str) -> list[Change]:
        out = []
        if self._lambda != old_l:
            out.append(Change(step, "grl_lambda", old_l, self._lambda, reason))
        if self._weight != old_w:
            out.append(Change(step, "speaker_weight", old_w, self._weight, reason))
        return out

    # ---- resume

    def state_dict(self) -> dict:
        """Everything needed to continue identically, as plain JSON types (goes into the checkpoint)."""
        return {
            "version": STATE_VERSION,
            "start": list(self._start),
            "grl_lambda": self._lambda,
            "speaker_weight": self._weight,
            "lambda_rest": self._lambda_rest,
            "weight_rest": self._weight_rest,
            "integral": self._integral,
            "acc_ema": [self._acc.value, self._acc.n],
            "loss_ema": [self._loss.value, self._loss.n],
            "last_update": self._last_update,
            "divergences": self._divergences,
            "amp_enabled": self._amp_enabled,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output; refuses missing and unknown keys (a different format is a bug)."""
        state = dict(state)
        expected = set(self.state_dict())
        missing, unknown = expected - set(state), set(state) - expected
        if missing or unknown:
            raise ValueError(f"band controller state: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
        if (version := state.pop("version")) != STATE_VERSION:
            raise ValueError(f"band controller state version {version} != {STATE_VERSION}")
        self._start = tuple(float(x) for x in state.pop("start"))
        self._lambda = float(state.pop("grl_lambda"))
        self._weight = float(state.pop("speaker_weight"))
        self._lambda_rest = float(state.pop("lambda_rest"))
        self._weight_rest = float(state.pop("weight_rest"))
        self._integral = float(state.pop("integral"))
        self._acc.value, self._acc.n = float(state["acc_ema"][0]), int(state.pop("acc_ema")[1])
        self._loss.value, self._loss.n = float(state["loss_ema"][0]), int(state.pop("loss_ema")[1])
        self._last_update = int(state.pop("last_update"))
        self._divergences = int(state.pop("divergences"))
        self._amp_enabled = bool(state.pop("amp_enabled"))
        assert not state, state  # every key above is popped: a new field must be restored here too

    def resume(self, state: dict) -> bool:
        """Continue a checkpoint's control `state`, unless this run's configured λ/weight differ from the ones
        that state started from: a changed `train.grl_lambda` / `train.loss.speaker` (a manual override on
        resume, a PBT perturbation) is an explicit request to restart control from the new values.

        Returns whether the state was restored (False also for an empty state: a checkpoint without control).
        """
        if not state or tuple(state.get("start", ())) != self._start:
            return False
        self.load_state_dict(state)
        return True


def controller_for(train_cfg) -> BandController | None:
    """The loop's controller: stage 2 with a speaker loss and `train.band.enabled`; None = λ/weight stay fixed.

    Args:
        train_cfg: the `train` section (uses stage, band, grl_lambda, loss.speaker).
    """
    if train_cfg.stage != 2 or train_cfg.loss.speaker <= 0 or not train_cfg.band.enabled:
        return None
    return BandController(train_cfg.band, train_cfg.grl_lambda, train_cfg.loss.speaker)


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)
