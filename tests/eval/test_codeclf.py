"""Code-space classifiers: they learn what real codes carry, are deterministic under a seed, and leave the global
RNG alone."""

import numpy as np
import pytest
import torch

from indextts_ray.eval.codeclf import (
    CodeClassifier,
    pad_codes,
    standardised_code_vectors,
    train_code_classifier,
)


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


def interleaved_batch(per_class: int = 12, vocab: int = 60):
    """Three classes, each drawing 60 % of its codes from its own third of 0..59 (interleaved: code c belongs to
    a seeded random class) and 40 % uniformly; and per-code vectors that say which class a code belongs to
    (one-hot + noise), as builtin code vectors say which pitch and loudness a code stands for."""
    rng = np.random.default_rng(0)
    owner = np.random.default_rng(99).permutation(vocab) % 3
    seqs, y = [], []
    for k, label in enumerate(("a", "b", "c")):
        mine = np.flatnonzero(owner == k)
        for _ in range(per_class):
            n = int(rng.integers(12, 31))
            noise = rng.random(n) < 0.4
            seqs.append(np.where(noise, rng.integers(0, vocab, n), rng.choice(mine, n)).tolist())
            y.append(label)
    vectors = np.eye(3)[owner] + 0.3 * np.random.default_rng(5).normal(size=(vocab, 3))
    return seqs, y, torch.tensor(vectors, dtype=torch.float32)


def test_code_vectors_start_the_embedding_and_the_judge_learns_faster():
    seqs, y, vectors = interleaved_batch()
    model = CodeClassifier(62, 3, code_vectors=vectors, head_layers=1)  # 60 codes + start/stop
    emb = model.embedding.weight.detach()
    assert emb.shape == (63, 3)  # the vectors' width, + the padding row
    assert torch.allclose(emb[:60], standardised_code_vectors(vectors, 62))
    assert torch.allclose(emb[:60].mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(emb[:60].std(0, unbiased=False), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[62], torch.zeros(3))  # padding
    assert [type(m).__name__ for m in model.out] == ["Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [type(m).__name__ for m in CodeClassifier(62, 3).out] == ["Dropout", "Linear"]  # default unchanged

    # 4 epochs on 25 training rows: a random embedding has not yet found which codes go together, the code
    # vectors say so from the start (held-out: 11 rows)
    plain = train_code_classifier(seqs, y, vocab=62, seed=0, epochs=4)
    primed = train_code_classifier(seqs, y, vocab=62, seed=0, epochs=4, code_vectors=vectors, head_layers=1)
    assert primed.heldout.n_test == plain.heldout.n_test == 11
    assert plain.heldout.accuracy == pytest.approx(7 / 11)
    assert primed.heldout.accuracy == 1.0
    assert not torch.allclose(primed.model.embedding.weight[:60].detach(), emb[:60])  # the embedding trains
    with pytest.raises(ValueError, match="1 <= K <= vocab 62"):
        train_code_classifier(seqs, y, vocab=62, epochs=1, code_vectors=torch.zeros(63, 3))  # more codes than the vocabulary
    with pytest.raises(ValueError, match="1 <= K <= vocab 50"):
        CodeClassifier(50, 3, code_vectors=vectors)
