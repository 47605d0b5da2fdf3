"""Linear probes: how well a logistic regression recovers a label (speaker, emotion) from a vector.

A probe standardises the features, fits `LogisticRegression` on a seeded stratified split and reports test
accuracy next to its chance level: the accuracy of always answering the training split's majority class,
and its Wilson interval at 2 standard errors (`wilson_interval`). Classes with fewer than `min_per_class`
examples are left out (they cannot be on both sides of the split); with fewer than two classes left there is
nothing to probe and the result is None.

How many test examples a verdict needs (`n_to_separate`): a test set of n examples can tell two accuracies a and
b apart when their Wilson intervals on n examples (z = 2) do not overlap. A goal check ("≥ 85 %") is judged
only when its test set can tell the goal from chance; otherwise a measured 3/4 or 4/4 says nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z = 2.0  # "2 standard errors": intervals and the n-needed rule (a two-sided 95.4 % interval)
MAX_N = 10**7  # n_to_separate gives up beyond this (levels that close cannot be told apart in practice)


def wilson_interval(p: float, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of an accuracy p measured on n examples; (0, 1) for n = 0.

    Unlike p ± z·se it stays inside [0, 1] and is not empty at p = 0 or 1 (4/4 correct is not "100 % ± 0").
    """
    if n <= 0:
        return 0.0, 1.0
    q = z * z / n
    centre = (p + q / 2) / (1 + q)
    half = z / (1 + q) * math.sqrt(p * (1 - p) / n + q / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def separable(a: float, b: float, n: int, z: float = Z) -> bool:
    """Whether n examples tell accuracies a and b apart: their Wilson intervals on n examples do not overlap."""
    lo, hi = min(a, b), max(a, b)
    return n > 0 and wilson_interval(lo, n, z)[1] < wilson_interval(hi, n, z)[0]


def n_to_separate(a: float, b: float, z: float = Z) -> int | None:
    """Smallest n at which `separable(a, b, n)`; None when a == b or more than MAX_N examples would be needed.

    Once reached, separation holds at every larger n (the tests check a grid of levels), so a bisection finds it.
    """
    if a == b or not separable(a, b, MAX_N, z):
        return None
    lo, hi = 0, 1  # separable(lo) is False, separable(hi) is True
    while not separable(a, b, hi, z):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if separable(a, b, mid, z) else (mid, hi)
    return hi


def judge(met: bool, n: int, goal: float, chance: float, unit: str = "test clips",
          z: float = Z) -> tuple[bool | None, str]:
    """A goal check's verdict: (`met`, "") when n examples can tell `goal` from `chance` (`n_to_separate`),
    else (None, "not judged: n too small (...)") with the n needed: a ✅/❌ on fewer would be a coin toss."""
    need = n_to_separate(goal, chance, z)
    if need is not None and n >= need:
        return met, ""
    why = f"{need} needed" if need is not None else f"more than {MAX_N:,} needed"
    return None, (f"not judged: n too small ({n} {unit}, {why} to tell {100 * goal:.1f} % from "
                  f"{100 * chance:.1f} % at {z:g} s.e.)")


@dataclass
class ProbeResult:
    """Test-split accuracy of one probe; `confusion[i][j]` counts true labels[i] predicted as labels[j]."""

    accuracy: float
    chance: float
    n_train: int
    n_test: int
    labels: list[str]
    per_class: dict[str, float]  # accuracy on each label's test examples
    confusion: list[list[int]]
    dropped_classes: int  # classes with fewer than min_per_class examples
    interval: tuple[float, float] = (0.0, 1.0)  # Wilson interval of `accuracy` on n_test, z = Z

    def class_counts(self) -> dict[str, int]:
        """Test examples of each label (the confusion matrix's row sums)."""
        return {c: int(sum(row)) for c, row in zip(self.labels, self.confusion)}

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    """A seeded stratified split over the examples of the classes that are kept (`index` into the input)."""

    kept: list[str]  # classes with at least min_per_class examples, sorted
    train: np.ndarray  # indices into the caller's arrays
    test: np.ndarray
    dropped_classes: int


def stratified_split(y: Sequence[str], seed: int = 0, test_fraction: float = 0.3,
                     min_per_class: int = 3) -> Split | None:
    """Drop classes with fewer than `min_per_class` examples and split the rest, stratified (at least one test
    example per class). None when fewer than two classes are left."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction <= 0.5:
        raise ValueError(f"test_fraction must be in (0, 0.5], got {test_fraction}")
    y = np.asarray([str(v) for v in y], dtype=object)
    counts = Counter(y.tolist())
    kept = sorted(c for c, n in counts.items() if n >= max(min_per_class, 2))
    if len(kept) < 2:
        return None
    index = np.flatnonzero(np.isin(y, kept))
    n_test = max(round(test_fraction * len(index)), len(kept))  # every class can appear in the test split
    train, test = train_test_split(index, test_size=n_test, stratify=y[index], random_state=seed)
    return Split(kept, train, test, len(counts) - len(kept))


def score_predictions(pred: Sequence[str], y_true: Sequence[str], labels: Sequence[str], chance: float,
                      n_train: int, dropped_classes: int = 0) -> ProbeResult:
    """Accuracy, per-class accuracy and confusion (rows true, columns predicted, in `labels` order)."""
    from sklearn.metrics import confusion_matrix

    pred, y_true = np.asarray(pred, dtype=object), np.asarray(y_true, dtype=object)
    labels = list(labels)
    accuracy = float(np.mean(pred == y_true)) if len(y_true) else float("nan")
    return ProbeResult(
        accuracy=accuracy,
        chance=chance,
        n_train=n_train,
        n_test=len(y_true),
        labels=labels,
        per_class={c: float(np.mean(pred[y_true == c] == c)) for c in labels if np.any(y_true == c)},
        confusion=confusion_matrix(y_true, pred, labels=labels).tolist(),
        dropped_classes=dropped_classes,
        interval=wilson_interval(accuracy, len(y_true)) if len(y_true) else (0.0, 1.0),
    )


def majority_chance(y_train: Sequence[str], y_test: Sequence[str]) -> float:
    """Accuracy on `y_test` of always answering the training split's majority class."""
    majority = Counter(list(y_train)).most_common(1)[0][0]
    return float(np.mean(np.asarray(y_test, dtype=object) == majority))


def linear_probe(
    x: np.ndarray,
    y: Sequence[str],
    seed: int = 0,
    test_fraction: float = 0.3,
    min_per_class: int = 3,
    label_order: Sequence[str] | None = None,
) -> ProbeResult | None:
    """Fit and score one probe.

    Args:
        x: (N, D) features; y: N labels.
        seed: split and solver seed (same seed, same data -> same numbers).
        test_fraction: share of the examples held out (at least one per class).
        min_per_class: smaller classes are dropped (counted in `dropped_classes`).
        label_order: order of `labels` in the result (e.g. the model's emotion list); default sorted.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    split = stratified_split(y, seed, test_fraction, min_per_class)
    if split is None:
        return None
    y = np.asarray([str(v) for v in y], dtype=object)
    x = np.asarray(x, dtype=np.float64)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x[split.train], y[split.train])
    return score_predictions(clf.predict(x[split.test]), y[split.test], ordered_labels(split.kept, label_order),
                             majority_chance(y[split.train], y[split.test]), len(split.train), split.dropped_classes)


def ordered_labels(kept: Sequence[str], label_order: Sequence[str] | None) -> list[str]:
    """`kept` in `label_order` (e.g. the model's emotion list), or sorted without one."""
    return [str(v) for v in label_order if v in kept] if label_order is not None else sorted(kept)
