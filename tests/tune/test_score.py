"""Band score: windows over logged steps, in-band fraction, mel penalty, PBT segment merging."""

import math

import pytest

from indextts_ray.tune.score import Window, band_score, band_windows, merge_segments


def _m(step, acc, mel=2.0, lam=1.0, w=0.1):
    return {"step": step, "speaker_acc": acc, "mel_loss": mel, "grl_lambda": lam, "speaker_weight": w}


def test_windows_average_logged_steps_and_ignore_validation_entries():
    metrics = {s: _m(s, acc) for s, acc in zip(range(2, 11, 2), [0.9, 0.7, 0.5, 0.4, 0.2])}
    metrics[4]["val_loss"] = 1.0
    metrics[12] = {"step": 12, "val_loss": 1.0}  # validation only: no window
    metrics[11] = _m(11, 0.3, mel=3.0, lam=2.0)
    windows = band_windows(metrics, 4)
    assert [w.end_step for w in windows] == [4, 8, 11]  # the last window is partial
    assert [w.speaker_acc for w in windows] == pytest.approx([0.8, 0.45, 0.25])
    assert windows[-1] == Window(11, pytest.approx(0.25), 2.5, 2.0, 0.1)


def test_score_is_in_band_fraction_minus_mel_increase():
    windows = [Window(10, 0.8, 2.0, 1, 0.1), Window(20, 0.5, 2.1, 1, 0.1), Window(30, 0.4, 2.2, 1, 0.1),
               Window(40, 0.2, 2.4, 1, 0.1)]
    s = band_score(windows, 0.3, 0.6, mel_penalty=2.0)
    assert s["in_band"] == 0.5 and s["steps_to_band"] == 20.0
    assert s["mel_increase"] == pytest.approx(0.2)  # 2.4 / 2.0 - 1
    assert s["band_score"] == pytest.approx(0.5 - 2.0 * 0.2)
    assert band_score(windows, 0.3, 0.6, 1.0, reference_mel_loss=3.0)["mel_increase"] == 0.0  # lower is no penalty
    assert math.isnan(band_score([], 0.3, 0.6, 1.0)["band_score"])
    assert math.isnan(band_score(windows[:1], 0.3, 0.6, 1.0)["steps_to_band"])


def test_merge_segments_drops_what_the_earlier_run_logged_after_the_branch_point():
    first = {s: _m(s, 0.9) for s in (5, 10, 15)}
    second = {s: _m(s, 0.4) for s in (5, 10)}
    merged = merge_segments([(first, 0), (second, 10)])
    assert sorted(merged) == [5, 10, 15, 20]
    assert merged[15]["speaker_acc"] == 0.4 and merged[15]["step"] == 15 and merged[10]["speaker_acc"] == 0.9
