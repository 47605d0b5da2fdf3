"""Weighted mixing of several prepared datasets into one deterministic epoch plan of token-budget batches.

Each dataset keeps its own shards; one `ShardIndex` over all their train files (dataset after dataset)
gives global row indices, and `dataset_bounds` finds where each dataset's rows start. The plan has the
same form as `bucketing.plan_epoch` (a list of arrays of global row indices), so `RankSchedule`, the row
reader and the resume position work unchanged.

Shares. p_i = w_i / sum(w) from weights, or p_i ∝ n_i^(1/T) with temperature T (T=1: natural sizes,
large T: uniform), counted in samples (rows), not batches or tokens. An epoch has `epoch_samples` rows
(default: all rows of all datasets); dataset i's quota is t_i = p_i * epoch_samples (rounded so the quotas
add up).

Rows of one dataset. Dataset i is read as an endless stream of passes; pass k is
`plan_epoch(lengths_i, seed_i, k)` (shuffled, length-bucketed, every row once). Epoch e takes the batches
whose first row sits at stream position [e*t_i, (e+1)*t_i). So:
  * t_i <= n_i (downsampled): no row repeats until the whole dataset has been seen, across epochs;
  * t_i > n_i (upsampled, a small set): several passes per epoch, each without replacement, so every row
    is used floor(t_i/n_i) or ceil(t_i/n_i) times, never more (lower variance than i.i.d. resampling);
  * a batch is never cut, so an epoch holds t_i rows give or take less than one batch per dataset.

Order. Each batch comes from one dataset. Batch j of dataset i gets the key
(rows of i before it + u * its rows) / (rows of i this epoch), u ~ U(0, 1). Sorting by key spreads every
dataset evenly over the epoch, so any stretch of the plan (a run stopped by max_steps halfway, one logging
window) sees the configured shares, and the jitter keeps the pattern from locking onto the rank assignment
(rank r takes entries k*world_size + r).

Everything is a pure function of (lengths, shares, seed, epoch): resuming at a plan position continues the
same sequence, as for a single dataset.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indextts_ray import storage
from indextts_ray.data.bucketing import BucketingSettings, plan_epoch
from indextts_ray.data.mixture_config import MixtureConfig, MixtureDataset
from indextts_ray.errors import DataError

__all__ = ["DatasetMeter", "Mixture", "MixtureConfig", "MixtureDataset", "MixturePlan", "check_compatible",
           "dataset_bounds", "epoch_quotas"]

_ORDER_TAG = 0x6D6978  # separates the interleave RNG stream from the per-dataset plan streams


def epoch_quotas(probabilities: np.ndarray, epoch_rows: int) -> np.ndarray:
    """Rows per dataset per epoch: p_i * epoch_rows rounded by largest remainder, so they sum to epoch_rows."""
    exact = np.asarray(probabilities, dtype=np.float64) * epoch_rows
    quotas = np.floor(exact).astype(np.int64)
    short = epoch_rows - int(quotas.sum())
    quotas[np.argsort(-(exact - quotas), kind="stable")[:short]] += 1
    return quotas


def dataset_bounds(file_of_row: np.ndarray, files_per_dataset: list[int]) -> np.ndarray:
    """Row offsets [0, end_0, end_1, ...] of each dataset in a ShardIndex built over their files in order.

    Args:
        file_of_row: `ShardIndex.file` (file number of each kept row, non-decreasing).
        files_per_dataset: how many shard files each dataset contributed, in the same order.
    """
    file_of_row = np.asarray(file_of_row)
    if len(file_of_row) and np.any(np.diff(file_of_row) < 0):
        raise ValueError("rows are not ordered by file: build the ShardIndex over the datasets' files in order")
    last_file = np.cumsum(files_per_dataset)  # exclusive end file number of each dataset
    return np.concatenate([[0], np.searchsorted(file_of_row, last_file, side="left")]).astype(np.int64)


@dataclass(frozen=True)
class MixturePlan:
    """One epoch: `batches` (global row indices, like `plan_epoch`) and the dataset of each batch."""

    batches: list[np.ndarray]
    dataset: np.ndarray  # (n_batches,) dataset index of each batch
    names: list[str]

    def rows_per_dataset(self, stop: int | None = None) -> np.ndarray:
        """Rows of each dataset in plan entries [0, stop): the samples seen so far this epoch at a position."""
        sizes = np.array([len(b) for b in self.batches[:stop]], dtype=np.int64)
        counts = np.bincount(self.dataset[:stop], weights=sizes, minlength=len(self.names))
        return counts.astype(np.int64)


class Mixture:
    """The datasets of one run (sizes after any row filter) and their per-epoch quotas.

    Args:
        cfg: the mixture section.
        lengths: `ShardIndex.lengths` over all datasets' train files, dataset after dataset.
        bounds: `dataset_bounds(...)`: row offsets of the datasets in `lengths`.
    """

    def __init__(self, cfg: MixtureConfig, lengths: np.ndarray, bounds: np.ndarray):
        self.names = cfg.names
        bounds = np.asarray(bounds, dtype=np.int64)
        if len(bounds) != len(self.names) + 1 or bounds[-1] != len(lengths):
            raise ValueError(f"bounds {bounds.tolist()} do not split {len(lengths)} rows into {len(self.names)} datasets")
        self.bounds = bounds
        self.lengths = [np.asarray(lengths[a:b], dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
        self.sizes = np.array([len(x) for x in self.lengths], dtype=np.int64)
        empty = [n for n, s in zip(self.names, self.sizes) if s == 0]
        if empty:
            raise DataError(f"mixture datasets without training rows (after filters): {empty}")
        self.probabilities = np.array(cfg.probabilities(self.sizes.tolist()), dtype=np.float64)
        self.epoch_rows = cfg.epoch_samples or int(self.sizes.sum())
        self.quotas = epoch_quotas(self.probabilities, self.epoch_rows)

    def plan(self, settings: BucketingSettings, seed: int, epoch: int) -> MixturePlan:
        """The epoch's interleaved batches; a pure function of (datasets, shares, settings, seed, epoch)."""
        rng = np.random.default_rng([seed, epoch, _ORDER_TAG])
        batches: list[np.ndarray] = []
        keys, owner = [], []
        for i, (lengths, quota) in enumerate(zip(self.lengths, self.quotas)):
            mine = _dataset_epoch(lengths, int(quota), settings, _dataset_seed(seed, i), epoch)
            sizes = np.array([len(b) for b in mine], dtype=np.float64)
            before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]]) if len(mine) else sizes
            keys.append((before + rng.random(len(mine)) * sizes) / max(float(sizes.sum()), 1.0))
            owner.append(np.full(len(mine), i, dtype=np.int64))
            batches.extend(b + self.bounds[i] for b in mine)
        order = np.argsort(np.concatenate(keys), kind="stable")
        return MixturePlan([batches[j] for j in order], np.concatenate(owner)[order], list(self.names))

    def summary(self) -> dict:
        """Sizes, shares and quotas per dataset, for the run log."""
        return {n: {"rows": int(s), "share": float(p), "epoch_rows": int(q)}
                for n, s, p, q in zip(self.names, self.sizes, self.probabilities, self.quotas)}


def _dataset_seed(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def _dataset_epoch(lengths: np.ndarray, quota: int, settings: BucketingSettings, seed: int,
                   epoch: int) -> list[np.ndarray]:
    """Batches of one dataset whose first row lies at stream position [epoch*quota, (epoch+1)*quota)."""
    n = len(lengths)
    lo, hi = epoch * quota, (epoch + 1) * quota
    out: list[np.ndarray] = []
    if quota == 0:
        return out
    for p in range(lo // n, (hi - 1) // n + 1):
        batches = plan_epoch(lengths, settings, seed, p)
        starts = p * n + np.concatenate([[0], np.cumsum([len(b) for b in batches])[:-1]])
        out.extend(b for b, s in zip(batches, starts) if lo <= s < hi)
    return out


class DatasetMeter:
    """Token-weighted loss per dataset over a logging window (sum it over ranks with `totals`)."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.sums = np.zeros((len(names), 2), dtype=np.float64)  # loss * tokens, tokens

    def add(self, dataset: int, loss: float, tokens: float) -> None:
        self.sums[dataset] += (float(loss) * tokens, tokens)

    def totals(self) -> list[float]:
        """Flat list to all-reduce (sum) over ranks before `metrics`."""
        return self.sums.reshape(-1).tolist()

    def metrics(self, totals: list[float] | None = None) -> dict[str, float]:
        """`mix/<name>/loss` for each dataset seen in the window; then starts a new window."""
        sums = self.sums if totals is None else np.asarray(totals, dtype=np.float64).reshape(-1, 2)
        out = {f"mix/{n}/loss": float(s / t) for n, (s, t) in zip(self.names, sums) if t > 0}
        self.sums[:] = 0
        return out


COMPATIBLE_KEYS = (("schema_version",), ("features", "kind"), ("features", "mode"), ("features", "dim"),
                   ("features", "codebook_size"),
                   ("tokenizer", "sha256"), ("emotion_labels",))


def check_compatible(dataset_dirs: list[Path]) -> None:
    """Refuse to mix datasets whose rows mean different things (tokenizer, features, codebook, labels).

    Besides the keys of `dataset.json`, the files an extractor fitted on the corpus (`<dir>/features/`,
    e.g. the `builtin` k-means codebook) must be identical: code ids of two separately fitted codebooks do
    not agree. The real `w2vbert-maskgct` codes come from one fixed codec and fit nothing there.
    """
    infos = []
    for d in dataset_dirs:  # paths or object-store URIs
        meta = storage.join(d, "dataset.json")
        if not storage.is_file(meta):
            raise DataError(f"{meta} not found: run `indextts-ray prepare` for this dataset first")
        info = storage.read_json(meta)
        key = {"/".join(k): _dig(info, k) for k in COMPATIBLE_KEYS}
        key["features/mode"] = key["features/mode"] or "stored"  # folders prepared before the mode existed
        fitted = storage.glob(storage.join(d, "features"), "*", recursive=True)
        key["features/fitted"] = {f[len(str(d).rstrip("/")) + 1:].replace(os.sep, "/"):
                                  hashlib.sha256(storage.read_bytes(f)).hexdigest() for f in fitted}
        infos.append((d, key))
    ref_dir, ref = infos[0]
    problems = [f"{k}: {d} has {v!r}, {ref_dir} has {ref.get(k)!r}"
                for d, key in infos[1:] for k, v in key.items() if v != ref.get(k)]
    if problems:
        raise DataError("mixture datasets are not compatible:\n  " + "\n  ".join(problems))


def _dig(info: dict, path: tuple[str, ...]):
    for k in path:
        info = info.get(k) if isinstance(info, dict) else None
    return info
