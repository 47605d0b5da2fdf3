"""Linear probes: how well a logistic regression recovers a label (speaker, emotion) from a vector.

A probe standardises the features, fits `LogisticRegression` on a seeded stratified split and reports test
accuracy next to its chance level: the accuracy of always answering the training split's majority class.
Classes with fewer than `min_per_class` examples are left out (they cannot be on both sides of the split);
with fewer than two classes left there is nothing to probe and the result is None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


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

    def to_json(self) -> dict:
        return asdict(self)


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
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not 0 < test_fraction <= 0.5:
        raise ValueError(f"test_fraction must be in (0, 0.5], got {test_fraction}")
    y = np.asarray([str(v) for v in y], dtype=object)
    counts = Counter(y.tolist())
    kept = sorted(c for c, n in counts.items() if n >= max(min_per_class, 2))
    if len(kept) < 2:
        return None
    keep = np.isin(y, kept)
    x, y = np.asarray(x, dtype=np.float64)[keep], y[keep]
    n_test = max(round(test_fraction * len(y)), len(kept))  # every class can appear in the test split
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x_tr, y_tr)
    pred = clf.predict(x_te)
    majority = Counter(y_tr.tolist()).most_common(1)[0][0]
    labels = [str(v) for v in label_order if v in kept] if label_order is not None else kept
    per_class = {c: float(np.mean(pred[y_te == c] == c)) for c in labels if np.any(y_te == c)}
    return ProbeResult(
        accuracy=float(np.mean(pred == y_te)),
        chance=float(np.mean(y_te == majority)),
        n_train=len(y_tr),
        n_test=len(y_te),
        labels=labels,
        per_class=per_class,
        confusion=confusion_matrix(y_te, pred, labels=labels).tolist(),
        dropped_classes=len(counts) - len(kept),
    )
