"""Deterministic token-budget length bucketing over the whole training set, and its split over ranks.

The epoch's batch plan is a pure function of (row lengths, seed, epoch, budget), identical on every rank:

    rows --chunk shuffle--> windows of `window` rows --sort by length--> greedy token-budget batches
         --shuffle batch order--> plan = [batch_0, batch_1, ...]   (each batch = global row indices)

An optimizer step consumes `world_size * grad_accum` consecutive plan entries; rank r takes entries
k*world_size + r. The data position is the number of plan entries consumed, so it is independent of the
world size: a run resumed with another world size (elastic) continues the same epoch order and every row
is used at most once per epoch. Entries that do not fill a whole last step are dropped (counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BucketingSettings:
    max_tokens: int
    max_batch_size: int
    window: int
    chunk: int = 64  # rows kept together by the first shuffle, so a window touches few Parquet row groups


def plan_epoch(lengths: np.ndarray, settings: BucketingSettings, seed: int, epoch: int) -> list[np.ndarray]:
    """Return the epoch's batches (arrays of row indices), each with batch_size * max_length <= max_tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    chunks = np.arange(0, n, settings.chunk)
    order = np.concatenate([np.arange(c, min(c + settings.chunk, n)) for c in rng.permutation(chunks)]) if n else []
    order = np.asarray(order, dtype=np.int64)
    batches: list[np.ndarray] = []
    for start in range(0, n, settings.window):
        window = order[start : start + settings.window]
        window = window[np.argsort(lengths[window], kind="stable")]
        batches.extend(_greedy_batches(window, lengths, settings))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def _greedy_batches(sorted_rows: np.ndarray, lengths: np.ndarray, s: BucketingSettings) -> list[np.ndarray]:
    out, begin = [], 0
    for i in range(len(sorted_rows)):
        size = i - begin + 1
        # rows are sorted ascending, so the newest row is the longest one of the batch
        if size > s.max_batch_size or size * lengths[sorted_rows[i]] > s.max_tokens:
            if i > begin:
                out.append(sorted_rows[begin:i])
            begin = i
    if begin < len(sorted_rows):
        out.append(sorted_rows[begin:])
    return out


def padding_fraction(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    """Share of padded positions: 1 - real / (batch_size * longest) summed over batches."""
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - real / padded if padded else 0.0


@dataclass
class RankSchedule:
    """Which plan entries rank `rank` of `world_size` processes, from global position `position`."""

    n_batches: int
    world_size: int
    rank: int
    grad_accum: int
    position: int = 0  # plan entries consumed in this epoch, over all ranks
    dropped: int = field(init=False)

    def __post_init__(self) -> None:
        per_step = self.world_size * self.grad_accum
        self.dropped = (self.n_batches - self.position) % per_step if self.n_batches > self.position else 0

    @property
    def per_step(self) -> int:
        return self.world_size * self.grad_accum

    @property
    def steps_left(self) -> int:
        """Optimizer steps left in the epoch: the same on every rank, so no rank waits at the epoch end."""
        return max(self.n_batches - self.position, 0) // self.per_step

    def micro_batches(self, step_in_run: int) -> list[int]:
        """Plan indices of this rank's micro-batches for the `step_in_run`-th step from `position`."""
        base = self.position + step_in_run * self.per_step
        return [base + k * self.world_size + self.rank for k in range(self.grad_accum)]


def rank_steps(n_entries, world_size: int, rank: int, grad_accum: int, epoch: int, position: int,
               last_epoch: int, max_steps: int | None = None):
    """This rank's optimizer steps from (`epoch`, `position`) to the end of epoch `last_epoch - 1`, across epoch
    boundaries: (epoch, step from the epoch's start position, steps from there in the epoch, plan entries of its
    micro-batches). `n_entries(epoch)` is the size of that epoch's plan; epochs too small for one global step
    yield nothing; at most `max_steps` steps. The planner serves a rank's stream from this sequence and the loop
    checks it against it."""
    done = 0
    while epoch < last_epoch:
        schedule = RankSchedule(n_entries(epoch), world_size, rank, grad_accum, position)
        for i in range(schedule.steps_left):
            if max_steps is not None and done >= max_steps:
                return
            yield epoch, i, schedule.steps_left, schedule.micro_batches(i)
            done += 1
        epoch, position = epoch + 1, 0
