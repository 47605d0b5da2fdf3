"""A simulated Stage-2 "plant": GRL λ and speaker-loss weight -> speaker accuracy, with lag, delay and noise.

Used by the controller tests and `benchmarks/band_control.py` to exercise the controller over thousands of
steps in milliseconds. The shape follows what Stage 2 shows: accuracy is the logistic of
`logit(start_acc) + drift * step - lambda_gain * log λ + weight_gain * log(w / 0.1)` (the classifier keeps
improving as training goes on), the network answers a change after `delay` steps and then with a
first-order lag, and a per-step accuracy from a small batch is noisy.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

REF_WEIGHT = 0.1  # the seed recipe's speaker-loss weight: `start_acc` is the accuracy at λ = 1 and this weight


@dataclass(frozen=True)
class PlantSettings:
    start_acc: float = 0.9  # steady-state accuracy at λ = 1, w = 0.1 and step 0
    lambda_gain: float = 1.5  # logit change per unit of log λ (more reversal, less speaker information)
    weight_gain: float = 1.0  # logit change per unit of log weight (a better-trained classifier)
    drift: float = 0.0005  # logit change per step: the classifier learns as training goes on
    lag: float = 30.0  # first-order time constant, steps
    delay: int = 5  # steps before a change of λ/weight starts to act
    noise: float = 0.05  # std of the per-step measured accuracy
    loss: float = 2.0  # the per-step training loss level (with 2 % noise)


class SimulatedPlant:
    """Step it with the current (λ, weight); it returns the measured (speaker_acc, loss) of that step."""

    def __init__(self, settings: PlantSettings, seed: int = 0):
        self.s = settings
        self.rng = random.Random(seed)
        self.t = 0
        self.true_acc = settings.start_acc  # the noise-free accuracy (what a large validation set would show)
        self._pending: deque[tuple[float, float]] = deque()

    def target(self, grl_lambda: float, speaker_weight: float) -> float:
        """Steady-state accuracy for (λ, weight) at the current step."""
        s = self.s
        logit = (math.log(s.start_acc / (1 - s.start_acc)) + s.drift * self.t
                 - s.lambda_gain * math.log(grl_lambda) + s.weight_gain * math.log(speaker_weight / REF_WEIGHT))
        return 1.0 / (1.0 + math.exp(-logit))

    def step(self, grl_lambda: float, speaker_weight: float) -> tuple[float, float]:
        self._pending.append((grl_lambda, speaker_weight))
        acting = self._pending.popleft() if len(self._pending) > self.s.delay else self._pending[0]
        self.true_acc += (self.target(*acting) - self.true_acc) / self.s.lag
        self.t += 1
        measured = min(max(self.true_acc + self.rng.gauss(0.0, self.s.noise), 0.0), 1.0)
        loss = self.s.loss * (1.0 + 0.02 * self.rng.gauss(0.0, 1.0))
        return measured, loss


def simulate(plant: SimulatedPlant, steps: int, controller=None, grl_lambda: float = 1.0,
             speaker_weight: float = REF_WEIGHT) -> list[dict]:
    """Run `steps` steps; with a `BandController` it sets λ/weight, else they stay fixed. One row per step."""
    rows = []
    for step in range(1, steps + 1):
        if controller is not None:
            grl_lambda, speaker_weight = controller.grl_lambda, controller.speaker_weight
        acc, loss = plant.step(grl_lambda, speaker_weight)
        if controller is not None:
            controller.update(step, acc, loss)
        rows.append({"step": step, "true_acc": plant.true_acc, "speaker_acc": acc, "loss": loss,
                     "grl_lambda": grl_lambda, "speaker_weight": speaker_weight})
    return rows


def band_stats(rows: list[dict], low: float, high: float, key: str = "true_acc") -> tuple[float, int | None]:
    """(fraction of the steps after entering the band that are inside it, steps to enter; None = never)."""
    inside = [low <= r[key] <= high for r in rows]
    first = next((i for i, x in enumerate(inside) if x), None)
    if first is None:
        return 0.0, None
    rest = inside[first:]
    return sum(rest) / len(rest), rows[first]["step"]
