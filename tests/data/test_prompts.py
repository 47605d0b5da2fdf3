"""Prompts drawn per epoch at ingest: same speaker, never the target, policy honoured, deterministic, fresh."""

import numpy as np
import pytest

from indextts_ray.data.config import PromptConfig
from indextts_ray.data.prompts import crop_starts, draw_prompts

# rows 0-5 speaker 0 (emotions 0,0,1,1,2,-1), rows 6-8 speaker 1 (emotion 0,0,3), row 9 speaker 2 alone
SPK = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
EMO = np.array([0, 0, 1, 1, 2, -1, 0, 0, 3, 0])
ALL = np.ones(10, bool)
TARGETS = np.arange(10)


def test_prompt_is_another_utterance_of_the_same_speaker():
    for epoch in range(20):
        d = draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(), seed=0, epoch=epoch)
        ok = d.prompt >= 0
        assert (d.prompt[ok] != TARGETS[ok]).all() and (SPK[d.prompt[ok]] == SPK[ok]).all()
        assert d.prompt[9] == -1 and d.reason.tolist() == [0] * 9 + [1]  # speaker 2 has nobody else


def test_deterministic_per_epoch_and_fresh_across_epochs():
    a = draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(), seed=3, epoch=1).prompt
    assert np.array_equal(a, draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(), seed=3, epoch=1).prompt)
    epochs = np.stack([draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(), 3, e).prompt for e in range(40)])
    # row 0 has 5 candidates: over 40 epochs it meets every one of them, about equally often
    counts = np.bincount(epochs[:, 0], minlength=6)[1:6]
    assert (counts > 0).all() and counts.max() <= 16
    assert not np.array_equal(epochs[0], epochs[1])  # a new pairing every epoch
    # a subset of targets gets the same prompts as in the full draw (a row's draw depends only on itself)
    sub = draw_prompts(SPK, EMO, ALL, np.array([7, 2]), PromptConfig(), 3, 1).prompt
    assert sub.tolist() == [a[7], a[2]]


def test_same_emotion_require_and_prefer():
    req = draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(same_emotion="require"), 0, 0)
    ok = req.prompt >= 0
    assert (EMO[req.prompt[ok]] == EMO[ok]).all() and (req.prompt[ok] != TARGETS[ok]).all()
    # rows 4 (emotion 2), 5 (unlabelled) and 8 (emotion 3) have no same-emotion partner; row 9 is alone
    assert req.reason.tolist() == [0, 0, 0, 0, 2, 2, 0, 0, 2, 1]
    pref = draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(same_emotion="prefer"), 0, 0)
    assert (pref.prompt[:9] >= 0).all() and pref.other_emotion == 3
    same = np.array([0, 1, 2, 3, 6, 7])
    assert (EMO[pref.prompt[same]] == EMO[same]).all()


def test_single_utterance_self_and_the_pool():
    d = draw_prompts(SPK, EMO, ALL, TARGETS, PromptConfig(single_utterance="self"), 0, 0)
    assert d.prompt[9] == 9 and (d.reason == 0).all()
    pool = np.zeros(10, bool)
    pool[[1, 7]] = True  # e.g. train rows only: prompts come from the pool, targets need not be in it
    d = draw_prompts(SPK, EMO, pool, TARGETS, PromptConfig(), 0, 0)
    assert d.prompt.tolist() == [1, -1, 1, 1, 1, 1, 7, -1, 7, -1]


def test_large_groups_are_vectorised_and_uniform():
    n = 200_000
    spk = np.repeat(np.arange(n // 1000), 1000)
    d = draw_prompts(spk, np.zeros(n, np.int64), np.ones(n, bool), np.arange(n), PromptConfig(), 0, 0)
    assert (d.prompt != np.arange(n)).all() and (spk[d.prompt] == spk).all()
    uses = np.bincount(d.prompt, minlength=n)
    assert uses.mean() == 1 and uses.max() <= 10  # every utterance prompts about once per epoch


@pytest.mark.parametrize("frames", [[10, 200, 1000]])
def test_crops_stay_inside_the_prompt(frames):
    frames = np.array(frames)
    for epoch in range(10):
        start = crop_starts(frames, 150, seed=0, epoch=epoch, targets=np.arange(3))
        assert start[0] == 0 and 0 <= start[1] <= 50 and 0 <= start[2] <= 850
    assert len({int(crop_starts(frames, 150, 0, e, np.arange(3))[2]) for e in range(10)}) > 5  # fresh crops
