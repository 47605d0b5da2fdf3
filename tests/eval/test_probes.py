"""Probes on synthetic vectors whose structure is known: they find what is there and nothing else."""

import math

import numpy as np
import pytest

from indextts_ray.eval.probes import judge, linear_probe, n_to_separate, separable, wilson_interval

S, E, K, D = 6, 7, 8, 32  # speakers, emotions, clips per (speaker, emotion), dims


def corpus(seed: int = 0):
    rng = np.random.default_rng(seed)
    spk = np.repeat(np.arange(S), E * K)
    emo = np.tile(np.repeat(np.arange(E), K), S)
    emo_centre, spk_centre = rng.normal(0, 1, (E, D)), rng.normal(0, 1, (S, D))
    noise = rng.normal(0, 1, (len(spk), D))
    return [f"spk{s}" for s in spk], [f"e{e}" for e in emo], emo_centre[emo], spk_centre[spk], noise


def test_emotion_separable_speaker_random_vectors():
    speakers, emotions, emo_centre, _, noise = corpus()
    x = 3 * emo_centre + noise  # what Stage 2 aims for: emotion in, speaker out
    emo = linear_probe(x, emotions, seed=0)
    spk = linear_probe(x, speakers, seed=0)
    assert (emo.n_train, emo.n_test) == (235, 101)
    assert emo.accuracy == 1.0 and emo.chance == pytest.approx(14 / 101)
    assert spk.accuracy == pytest.approx(17 / 101) and spk.chance == pytest.approx(16 / 101)  # ~ chance
    assert emo.per_class == {f"e{e}": 1.0 for e in range(E)}
    assert np.trace(np.array(emo.confusion)) == emo.n_test and np.sum(emo.confusion) == emo.n_test


def test_speaker_separable_emotion_random_vectors():
    speakers, emotions, _, spk_centre, noise = corpus()
    x = 3 * spk_centre + noise  # a Stage-1 style vector: it carries the speaker
    assert linear_probe(x, speakers, seed=0).accuracy == 1.0
    emo = linear_probe(x, emotions, seed=0)
    assert emo.accuracy < emo.chance + 0.05


def test_confusable_classes_show_in_per_class_accuracy_and_confusion():
    rng = np.random.default_rng(1)
    y = np.repeat(["a", "b", "c", "d"], 40)
    centres = {"a": rng.normal(0, 1, D) * 3, "b": rng.normal(0, 1, D) * 3}
    centres["c"] = centres["d"] = rng.normal(0, 1, D) * 3  # c and d are the same distribution
    x = np.stack([centres[v] for v in y]) + rng.normal(0, 1, (len(y), D))
    r = linear_probe(x, y, seed=0, label_order=["d", "c", "b", "a"])
    assert r.labels == ["d", "c", "b", "a"]
    assert r.per_class["a"] == 1.0 and r.per_class["b"] == 1.0
    assert r.per_class["c"] < 0.8 and r.per_class["d"] < 0.8
    conf = np.array(r.confusion)
    assert conf[0, 1] + conf[1, 0] > 0  # d <-> c confusions
    assert conf[2:, :2].sum() == 0 and conf[:2, 2:].sum() == 0  # a, b never confused with c, d


def test_small_classes_dropped_and_nothing_to_probe():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (23, 4))
    y = ["a"] * 10 + ["b"] * 10 + ["c"] * 2 + ["d"]
    r = linear_probe(x, y, seed=0, min_per_class=3)
    assert r.labels == ["a", "b"] and r.dropped_classes == 2 and r.n_train + r.n_test == 20
    assert linear_probe(x, ["a"] * 20 + ["b"] * 3, min_per_class=4) is None
    with pytest.raises(ValueError, match="test_fraction"):
        linear_probe(x, y, test_fraction=0.7)


def test_wilson_interval_matches_the_hand_computed_one():
    # p = 0.8, n = 10, z = 2: q = z²/n = 0.4, centre = (0.8 + 0.2) / 1.4 = 5/7,
    # half = (2 / 1.4) · sqrt(0.8 · 0.2 / 10 + 0.4 / 40) = (10/7) · sqrt(0.026)
    low, high = wilson_interval(0.8, 10)
    assert low == pytest.approx((5 - 10 * math.sqrt(0.026)) / 7, abs=1e-12)
    assert high == pytest.approx((5 + 10 * math.sqrt(0.026)) / 7, abs=1e-12)
    assert (low, high) == pytest.approx((0.483935, 0.944636), abs=1e-6)
    # 4/4 correct: q = 1, centre 0.75, half 0.25, i.e. [50 %, 100 %], not "100 % ± 0"
    assert wilson_interval(1.0, 4) == pytest.approx((0.5, 1.0))
    assert wilson_interval(0.0, 4) == pytest.approx((0.0, 0.5))
    assert wilson_interval(0.5, 0) == (0.0, 1.0)


def test_n_needed_to_tell_a_goal_from_chance():
    # 85 % vs chance 1/7: intervals on 8 clips [0.4965, 0.9702] and [0.0274, 0.4964] just part; on 7 they overlap
    assert n_to_separate(0.85, 1 / 7) == 8
    assert separable(0.85, 1 / 7, 8) and not separable(0.85, 1 / 7, 7)
    assert wilson_interval(0.85, 8)[0] == pytest.approx(0.496455, abs=1e-6)
    assert wilson_interval(1 / 7, 8)[1] == pytest.approx(0.496401, abs=1e-6)
    assert n_to_separate(0.5, 1 / 6) == 32 and n_to_separate(1 / 6, 0.5) == 32  # symmetric
    assert n_to_separate(0.85, 0.80) == 925  # 5 points apart need a large test set
    assert n_to_separate(0.3, 0.3) is None


def test_separation_once_reached_holds_for_larger_n():
    """What the bisection in n_to_separate relies on, on a grid of level pairs."""
    levels = [i / 20 for i in range(21)]
    for a in levels:
        for b in levels:
            if a < b:
                n = n_to_separate(a, b)
                assert not separable(a, b, n - 1)
                assert all(separable(a, b, m) for m in range(n, n + 200))


def test_tiny_test_set_is_not_judged_a_large_one_is():
    ok, note = judge(True, 4, 0.85, 1 / 7)  # a 4-clip test set: 4/4 is [50 %, 100 %]
    assert ok is None
    assert note == "not judged: n too small (4 test clips, 8 needed to tell 85.0 % from 14.3 % at 2 s.e.)"
    assert judge(False, 8, 0.85, 1 / 7) == (False, "")
    assert judge(True, 40, 0.85, 0.8) == (None, "not judged: n too small (40 test clips, 925 needed to tell "
                                                "85.0 % from 80.0 % at 2 s.e.)")
    assert judge(True, 10**6, 0.5, 0.5)[1].startswith("not judged: n too small (1000000 test clips, more than")


def test_probe_reports_its_wilson_interval():
    speakers, emotions, emo_centre, _, noise = corpus()
    x = 3 * emo_centre + noise
    emo = linear_probe(x, emotions, seed=0)
    assert emo.accuracy == 1.0 and emo.n_test == 101
    assert emo.interval == pytest.approx(wilson_interval(1.0, 101))
    assert emo.interval == pytest.approx((101 / 105, 1.0))  # p = 1: centre - half = n / (n + z²)
    assert emo.class_counts() == {f"e{e}": n for e, n in enumerate([15, 14, 14, 14, 15, 15, 14])}
    spk = linear_probe(x, speakers, seed=0)
    assert spk.interval == pytest.approx(wilson_interval(17 / 101, 101))
    assert spk.interval[0] < spk.chance < spk.interval[1]  # the speaker probe is at chance, within its interval
