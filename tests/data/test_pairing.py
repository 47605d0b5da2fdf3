"""Prompt/target pairing rules, on metadata only."""

from __future__ import annotations

import random

import numpy as np
import pytest

from indextts_ray.data.config import PromptConfig
from indextts_ray.data.pairing import pair_prompts, stable_hash

# speaker a: 5 rows (2 happy, 2 sad, 1 unlabelled); b: 2 rows of different emotions; c: 1 row
IDS = ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "c1"]
SPK = ["a", "a", "a", "a", "a", "b", "b", "c"]
EMO = ["happy", "happy", "sad", "sad", None, "happy", "sad", "neutral"]


def _pairs(cfg: PromptConfig, ids=IDS, spk=SPK, emo=EMO) -> dict[str, list[str]]:
    p = pair_prompts(ids, spk, emo, cfg)
    return {ids[i]: [ids[c] for c in p.candidates[i] if c >= 0] for i in range(len(ids))}


def test_prompts_are_other_utterances_of_the_same_speaker():
    p = pair_prompts(IDS, SPK, EMO, PromptConfig(candidates=3))
    for i, row in enumerate(p.candidates):
        cands = [c for c in row if c >= 0]
        assert i not in cands and len(set(cands)) == len(cands)
        assert all(SPK[c] == SPK[i] for c in cands)
        assert len(cands) == min(3, SPK.count(SPK[i]) - 1)
    assert p.reject == [None] * 7 + ["single_utterance_speaker"]
    assert p.single_utterance_speakers == ["c"]


def test_every_utterance_is_a_first_prompt_once_per_speaker():
    # the cyclic order makes first candidates a permutation of each speaker's rows: balanced prompt use
    p = pair_prompts(IDS, SPK, EMO, PromptConfig())
    firsts = sorted(int(c) for c in p.candidates[:7, 0])
    assert firsts == list(range(7))


def test_pairs_do_not_depend_on_row_order():
    rng = random.Random(3)
    order = list(range(len(IDS)))
    rng.shuffle(order)
    a = _pairs(PromptConfig())
    b = _pairs(PromptConfig(), [IDS[i] for i in order], [SPK[i] for i in order], [EMO[i] for i in order])
    assert a == b
    assert _pairs(PromptConfig(seed=1)) != a  # the seed changes the pairing


def test_same_emotion_require_and_prefer():
    req = pair_prompts(IDS, SPK, EMO, PromptConfig(same_emotion="require"))
    got = {IDS[i]: [IDS[c] for c in req.candidates[i] if c >= 0] for i in range(len(IDS))}
    assert got["a1"] == ["a2"] and got["a3"] == ["a4"]
    assert req.reject == [None, None, None, None, "no_same_emotion_prompt", "no_same_emotion_prompt",
                          "no_same_emotion_prompt", "single_utterance_speaker"]
    pref = pair_prompts(IDS, SPK, EMO, PromptConfig(same_emotion="prefer"))
    assert pref.reject == [None] * 7 + ["single_utterance_speaker"]
    assert pref.other_emotion_prompts == 3  # a5, b1, b2 fall back to any emotion of their speaker
    assert [IDS[c] for c in pref.candidates[0] if c >= 0] == ["a2"]
    assert all(SPK[c] == "a" and c != 4 for c in pref.candidates[4] if c >= 0)


def test_single_utterance_self_prompt_when_configured():
    p = pair_prompts(IDS, SPK, EMO, PromptConfig(single_utterance="self"))
    assert p.reject == [None] * 8 and list(p.candidates[7]) == [7, -1, -1]
    assert p.single_utterance_speakers == ["c"]  # still reported


def test_large_speaker_is_linear_and_candidates_fill():
    n = 20_000
    ids = [f"u{i}" for i in range(n)]
    p = pair_prompts(ids, ["s"] * n, [None] * n, PromptConfig(candidates=4))
    assert (p.candidates >= 0).all() and (p.candidates != np.arange(n)[:, None]).all()
    # each row is a k-th candidate exactly once for every k
    for k in range(4):
        assert np.array_equal(np.sort(p.candidates[:, k]), np.arange(n))


def test_stable_hash_is_fixed():
    assert stable_hash("abc", 0) == stable_hash("abc", 0) != stable_hash("abc", 1)
    assert stable_hash("abc", 0) == 10224132244565004249  # blake2b: the same in every process and on every machine


@pytest.mark.parametrize("bad", [{"candidates": 0}, {"same_emotion": "maybe"}, {"single_utterance": "dup"}])
def test_prompt_config_is_validated(bad):
    with pytest.raises(ValueError):
        PromptConfig(**bad)
