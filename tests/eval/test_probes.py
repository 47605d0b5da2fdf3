"""Probes on synthetic vectors whose structure is known: they find what is there and nothing else."""

import numpy as np
import pytest

from indextts_ray.eval.probes import linear_probe

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
