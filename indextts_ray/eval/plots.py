"""The report's PNG plots (matplotlib, Agg backend: no display on clusters and CI).

Each function draws one figure into `path` and returns it, or returns None when its data are absent (e.g. a
run without a Stage-2 speaker adversary has no band plot).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402

from indextts_ray.eval.embed import ClipEmbeddings  # noqa: E402
from indextts_ray.eval.probes import ProbeResult  # noqa: E402

MAX_LEGEND = 12  # more classes than this: colours only (500 speakers do not fit a legend)


def _save(fig, path: Path) -> Path:
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def _series(metrics: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = sorted(s for s, m in metrics.items() if m.get(key) is not None)
    return steps, [float(metrics[s][key]) for s in steps]


def plot_loss_curves(curves: dict[str, dict[int, dict]], path: Path,
                     eval_loss: dict[str, float] | None = None) -> Path | None:
    """Train mel/text loss and validation mel loss over steps, one panel per stage; `eval_loss` (this
    evaluation's held-out mel loss of the stage's export) is drawn as a star at the last step."""
    stages = [n for n, m in curves.items() if _series(m, "mel_loss")[0]]
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.6), squeeze=False)
    for ax, name in zip(axes[0], stages):
        m = curves[name]
        for key, style, label in (("mel_loss", "-", "train mel"), ("text_loss", ":", "train text"),
                                  ("val_loss", "o--", "val mel")):
            steps, vals = _series(m, key)
            if steps:
                ax.plot(steps, vals, style, ms=4, label=label)
        if eval_loss and name in eval_loss:
            ax.plot([max(m)], [eval_loss[name]], "k*", ms=10, label="eval held-out mel")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_speaker_band(curves: dict[str, dict[int, dict]], band: dict[str, tuple[float, float]],
                      path: Path) -> Path | None:
    """Stages with a speaker adversary: speaker_acc with the target band shaded, GRL λ and loss weight."""
    stages = [n for n, m in curves.items()
              if any(v.get("speaker_weight", 0) > 0 and "speaker_acc" in v for v in m.values())]
    if not stages:
        return None
    fig, axes = plt.subplots(2, len(stages), figsize=(5 * len(stages), 5.5), squeeze=False, sharex="col")
    for col, name in enumerate(stages):
        m = curves[name]
        low, high = band.get(name, (0.30, 0.60))
        top, bottom = axes[0][col], axes[1][col]
        top.axhspan(low, high, color="tab:green", alpha=0.15, label=f"band {low:.0%}–{high:.0%}")
        top.plot(*_series(m, "speaker_acc"), label="speaker_acc (one step)", alpha=0.35, lw=0.8)
        if any("band_acc" in v for v in m.values()):
            top.plot(*_series(m, "band_acc"), label="controller reading (EMA)", color="tab:red")
        top.set_ylim(0, 1)
        top.set_title(f"{name}: speaker classifier on GRL(emotion vector)")
        top.legend(fontsize=8)
        bottom.plot(*_series(m, "grl_lambda"), label="GRL λ")
        bottom.plot(*_series(m, "speaker_weight"), label="speaker-loss weight")
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        bottom.legend(fontsize=8)
    return _save(fig, path)


def plot_probe_bars(probes: dict[str, dict[str, ProbeResult | None]], titles: dict[str, str],
                    path: Path) -> Path | None:
    """Grouped bars: probe accuracy per stage with its Wilson interval (2 s.e.) as an error bar, and its chance
    level as a black line: bars whose intervals overlap are not told apart by this test set."""
    stages = list(probes)
    keys = [k for k in titles if any(probes[s].get(k) is not None for s in stages)]
    if not keys:
        return None
    width = 0.8 / len(stages)
    fig, ax = plt.subplots(figsize=(2.4 * len(keys) + 2, 4))
    for i, stage in enumerate(stages):
        xs = np.arange(len(keys)) + (i - (len(stages) - 1) / 2) * width
        acc = [probes[stage][k].accuracy if probes[stage].get(k) else 0.0 for k in keys]
        ci = np.array([probes[stage][k].interval if probes[stage].get(k) else (0.0, 0.0) for k in keys])  # (K, 2)
        err = np.clip(np.stack([np.array(acc) - ci[:, 0], ci[:, 1] - np.array(acc)]), 0, None)  # (2, K)
        bars = ax.bar(xs, acc, width * 0.9, label=stage, yerr=err, capsize=3, error_kw={"lw": 1})
        for x, k in zip(xs, keys):
            p = probes[stage].get(k)
            if p is not None:
                ax.hlines(p.chance, x - width * 0.45, x + width * 0.45, colors="black", lw=2)
        ax.bar_label(bars, labels=[f"{a:.2f}" for a in acc], fontsize=7)
    ax.plot([], [], color="black", lw=2, label="chance (majority class)")
    ax.set_xticks(np.arange(len(keys)), [titles[k] for k in keys], fontsize=9)
    ax.set_ylim(0, 1.25)  # headroom for the legend above the bars
    ax.set_ylabel("held-out accuracy (Wilson interval, 2 s.e.)")
    ax.legend(fontsize=8, loc="upper center", ncol=len(stages) + 1)
    return _save(fig, path)


def plot_confusion(probe: ProbeResult | None, title: str, path: Path, axes: tuple[str, str] = ("true", "predicted"),
                   ) -> Path | None:
    """Row-normalised confusion matrix (true rows, predicted columns; `axes` names them) with the counts written in."""
    if probe is None:
        return None
    conf = np.array(probe.confusion, dtype=float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    n = len(probe.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), probe.labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), probe.labels, fontsize=8)
    ax.set_ylabel(axes[0])
    ax.set_xlabel(axes[1])
    ax.set_title(f"{title}\naccuracy {probe.accuracy:.2f} (chance {probe.chance:.2f})", fontsize=9)
    return _save(fig, path)


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, title: str, order: list[str] | None = None) -> None:
    present = set(labels.tolist())
    classes = [c for c in order if c in present] + sorted(present - set(order)) if order else sorted(present)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, color=cmap(i % cmap.N), label=str(c))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= MAX_LEGEND:
        ax.legend(fontsize=7, markerscale=1.2, loc="best")


def _pca2(x: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    if len(x) < 2:
        return np.zeros((len(x), 2))
    n = min(2, x.shape[1], len(x))
    xy = PCA(n_components=n, random_state=0).fit_transform(x)
    return xy if n == 2 else np.pad(xy, ((0, 0), (0, 2 - n)))


def plot_clusters(emb: ClipEmbeddings, emotion_labels: list[str], title: str, path: Path) -> Path | None:
    """PCA (2-D) of the emotion vectors coloured by speaker and by emotion, and of the speaker latents by
    speaker. After Stage 2 the emotion vectors should group by emotion, not by speaker."""
    if len(emb.clip_ids) < 2:
        return None
    emo_xy, spk_xy = _pca2(emb.emo_vec), _pca2(emb.speaker_latent)
    names = np.array([emotion_labels[i] if 0 <= i < len(emotion_labels) else "unknown" for i in emb.emotion_ids],
                     dtype=object)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    _scatter(axes[0], emo_xy, emb.speakers, "emotion vector, by speaker")
    _scatter(axes[1], emo_xy, names, "emotion vector, by emotion", order=emotion_labels)
    _scatter(axes[2], spk_xy, emb.speakers, "speaker latents (mean), by speaker")
    fig.suptitle(f"{title}: PCA of {len(emb.clip_ids)} probed clips", fontsize=10)
    return _save(fig, path)


def plot_throughput(curves: dict[str, dict[int, dict]], path: Path) -> Path | None:
    """Batch padding share and training throughput (non-padding tokens/s) over steps, per stage."""
    stages = [n for n, m in curves.items() if _series(m, "tokens_per_s")[0] or _series(m, "padding")[0]]
    if not stages:
        return None
    fig, (pad_ax, tps_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name in stages:
        steps, pad = _series(curves[name], "padding")
        pad_ax.plot(steps, [100 * p for p in pad], label=name)
        tps_ax.plot(*_series(curves[name], "tokens_per_s"), label=name)
    pad_ax.set_ylabel("padding (% of GPT positions)")
    tps_ax.set_ylabel("tokens/s (non-padding)")
    for ax in (pad_ax, tps_ax):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_emotion_control(per_stage: dict[str, dict[str, ProbeResult | None]], titles: dict[str, str],
                         path: Path) -> Path | None:
    """Per-emotion accuracy of the judge on generated codes: one panel per mode (label, reference clip), one
    bar per stage and emotion, chance (1/K) as a dashed line. Empty modes are left out."""
    modes = [m for m in titles if any(p.get(m) is not None for p in per_stage.values())]
    if not modes:
        return None
    stages = list(per_stage)
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 3.8), squeeze=False)
    width = 0.8 / len(stages)
    for ax, mode in zip(axes[0], modes):
        labels = next(p[mode].labels for p in per_stage.values() if p.get(mode) is not None)
        for i, stage in enumerate(stages):
            p = per_stage[stage].get(mode)
            acc = [p.per_class.get(label, 0.0) if p else 0.0 for label in labels]
            ax.bar(np.arange(len(labels)) + (i - (len(stages) - 1) / 2) * width, acc, width * 0.9,
                   label=f"{stage} ({p.accuracy:.0%})" if p else f"{stage} (n/a)")
        ax.axhline(1 / len(labels), color="black", ls="--", lw=1, label="chance")
        ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.3)  # headroom for the legend
        ax.set_ylabel("judged as asked")
        ax.set_title(titles[mode], fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=len(stages) + 1)
    return _save(fig, path)
