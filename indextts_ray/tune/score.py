"""The Stage-2 band score: how much of a run kept speaker accuracy inside the band, at what mel-loss cost.

A run's logged steps (`metrics.jsonl`) are grouped into evaluation windows of `window_steps` optimizer steps;
a window is in band when its mean speaker accuracy is in [low, high]. The score is the in-band fraction of
windows minus `mel_penalty` x the relative increase of the last window's mel loss over the reference (the
Stage-1 value, by default the first window's, since Stage 2 starts from the Stage-1 weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    end_step: int
    speaker_acc: float
    mel_loss: float
    grl_lambda: float  # at the window's last logged step
    speaker_weight: float


def band_windows(metrics: dict[int, dict], window_steps: int) -> list[Window]:
    """Windows (steps 1..W, W+1..2W, ...) over the logged training steps; the last one may be partial.

    Args:
        metrics: {step: metrics} as `train.tracking.read_metrics` returns (steps without speaker_acc, e.g.
            validation-only entries, are ignored).
        window_steps: optimizer steps per window.
    """
    groups: dict[int, list[dict]] = {}
    for step in sorted(s for s, m in metrics.items() if "speaker_acc" in m):
        groups.setdefault((step - 1) // window_steps, []).append({**metrics[step], "step": step})
    out = []
    last = max(groups, default=0)
    for k, rows in sorted(groups.items()):
        out.append(Window(
            end_step=(k + 1) * window_steps if k < last else min((k + 1) * window_steps, rows[-1]["step"]),
            speaker_acc=sum(r["speaker_acc"] for r in rows) / len(rows),
            mel_loss=sum(r["mel_loss"] for r in rows) / len(rows),
            grl_lambda=rows[-1]["grl_lambda"],
            speaker_weight=rows[-1]["speaker_weight"],
        ))
    return out


def band_score(windows: list[Window], low: float, high: float, mel_penalty: float,
               reference_mel_loss: float | None = None) -> dict[str, float]:
    """{"band_score", "in_band", "mel_increase", "steps_to_band"} of a run's windows (NaN score if none).

    `steps_to_band` is the end step of the first in-band window (NaN if none was in band).
    """
    if not windows:
        return {"band_score": math.nan, "in_band": math.nan, "mel_increase": math.nan, "steps_to_band": math.nan}
    inside = [low <= w.speaker_acc <= high for w in windows]
    reference = reference_mel_loss or windows[0].mel_loss
    mel_increase = max(0.0, windows[-1].mel_loss / reference - 1.0)
    in_band = sum(inside) / len(inside)
    first = next((w.end_step for w, x in zip(windows, inside) if x), math.nan)
    return {"band_score": in_band - mel_penalty * mel_increase, "in_band": in_band,
            "mel_increase": mel_increase, "steps_to_band": float(first)}


def merge_segments(segments: list[tuple[dict[int, dict], int]]) -> dict[int, dict]:
    """Join the metrics of consecutive runs (PBT segments) into one step axis: [(metrics, step offset), ...].

    A segment starts from a checkpoint at its offset, so what an earlier segment logged after it is dropped.
    """
    out: dict[int, dict] = {}
    for metrics, offset in segments:
        out = {s: m for s, m in out.items() if s <= offset}
        for step, m in metrics.items():
            out[step + offset] = {**m, "step": step + offset}
    return out
