"""Results of a band-control search: a CSV/console table and a PNG of speaker_acc, λ and weight per trial."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from indextts_ray.io_utils import atomic_write


def write_table(rows: list[dict], path: Path) -> Path:
    """One CSV row per trial (columns: the union of the rows' keys, in first-seen order)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)

    return atomic_write(path, write)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A fixed-width text table of `columns` (floats with 4 significant digits)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot_trials(traces: dict[str, dict[int, dict]], low: float, high: float, path: Path,
                best: str | None = None) -> Path:
    """speaker_acc (band shaded), GRL λ and speaker-loss weight over steps, one line per trial.

    Args:
        traces: {trial name: {step: metrics}} (the logged training steps).
        low, high: the band.
        best: drawn thicker and named in the title.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    axes[0].axhspan(low, high, color="tab:green", alpha=0.15, label=f"band [{low:.2f}, {high:.2f}]")
    for name, metrics in sorted(traces.items()):
        steps = sorted(s for s, m in metrics.items() if "speaker_acc" in m)
        if not steps:
            continue
        width = 2.5 if name == best else 1.0
        for ax, key in zip(axes, ("speaker_acc", "grl_lambda", "speaker_weight")):
            ax.plot(steps, [metrics[s][key] for s in steps], lw=width, label=name if key == "speaker_acc" else None)
    axes[0].set_ylabel("speaker_acc")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].set_ylabel("GRL λ")
    axes[2].set_ylabel("speaker-loss weight")
    for ax in axes[1:]:
        ax.set_yscale("log")
    axes[2].set_xlabel("step")
    fig.suptitle("Stage-2 band control" + (f" (best: {best})" if best else ""))
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
