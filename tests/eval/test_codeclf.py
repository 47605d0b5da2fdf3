"""Code-space classifiers: they learn what real codes carry, are deterministic under a seed, and leave the global
RNG alone."""

import numpy as np
import pytest
import torch

from indextts_ray.eval.codeclf import pad_codes, train_code_classifier


def easy_batch(seed: int = 0, per_class: int = 20):
    """Three classes that differ the way emotions do in real codes, by which codes occur: class k draws from codes
    8k .. 8k+11 (bands overlap by 4), with 20 % uniform noise codes; 12-30 codes each."""
    rng = np.random.default_rng(seed)
    seqs, y = [], []
    for k, label in enumerate(("a", "b", "c")):
        for _ in range(per_class):
            n = int(rng.integers(12, 31))
            noise = rng.random(n) < 0.2
            seqs.append(np.where(noise, rng.integers(0, 30, n), rng.integers(8 * k, 8 * k + 12, n)).tolist())
            y.append(label)
    return seqs, y


def test_learns_an_easy_batch_and_reports_held_out_accuracy():
    seqs, y = easy_batch()
    clf = train_code_classifier(seqs, y, vocab=30, seed=0, epochs=25)
    h = clf.heldout
    assert (h.n_train, h.n_test) == (42, 18) and h.labels == ["a", "b", "c"]
    assert h.chance == pytest.approx(6 / 18)
    assert h.accuracy >= 0.9  # far above chance
    assert np.trace(np.array(h.confusion)) == round(h.accuracy * h.n_test)
    fresh, fresh_y = easy_batch(seed=1, per_class=10)
    assert np.mean(np.array(clf.predict(fresh)) == np.array(fresh_y)) >= 0.85  # unseen sequences too
    assert clf.predict([[], [5]])[0] in ("a", "b", "c")  # an empty generation still gets a verdict


def test_seeded_and_leaves_the_global_rng_alone():
    seqs, y = easy_batch(per_class=8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    one = train_code_classifier(seqs, y, vocab=30, seed=3, epochs=3)
    assert torch.equal(torch.get_rng_state(), before)
    two = train_code_classifier(seqs, y, vocab=30, seed=3, epochs=3)
    for k, v in one.model.state_dict().items():
        assert torch.equal(v, two.model.state_dict()[k]), k
    assert one.heldout == two.heldout
    other = train_code_classifier(seqs, y, vocab=30, seed=4, epochs=3)
    assert not torch.equal(other.model.embedding.weight, one.model.embedding.weight)


def test_label_order_small_classes_and_bad_codes():
    seqs, y = easy_batch(per_class=8)
    clf = train_code_classifier(seqs + [[1, 2]], y + ["d"], vocab=30, epochs=1, label_order=["c", "d", "b", "a"])
    assert clf.labels == ["c", "b", "a"] and clf.heldout.dropped_classes == 1
    assert train_code_classifier(seqs[:8], y[:8], vocab=30) is None  # one class: nothing to learn
    with pytest.raises(ValueError, match="outside the classifier vocabulary"):
        train_code_classifier(seqs, y, vocab=25, epochs=1)
    x, mask = pad_codes([[3, 4, 5], [], list(range(10))], pad_id=30, max_len=4)
    assert x.tolist() == [[3, 4, 5, 30], [30, 30, 30, 30], [0, 1, 2, 3]] and mask.sum().item() == 7
