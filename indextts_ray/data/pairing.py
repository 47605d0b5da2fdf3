"""Deterministic prompt/target pairing on metadata (before any audio is read).

Within each speaker (or speaker + emotion) group, rows are ordered by a hash of (seed, id); row i's prompt
candidates are the next `candidates` rows in that cyclic order. So the prompt is never the target, pairs do
not depend on the manifest's row order, every utterance is a prompt about as often as a target, and the cost
is one sort (no per-pair work; a speaker with 10k utterances costs the same per row as one with 3).

Later candidates are fallbacks, used in order when an earlier candidate's audio is rejected by the
audio checks (the shard workers count those as `prompt_fallbacks`).

    speaker A, hash order:  a3 -> a1 -> a4 -> a2 -> (a3)      candidates(a1) = [a4, a2, a3]

Speakers with one usable utterance are reported and either rejected (`single_utterance_speaker`) or, with
`prompt.single_utterance: self`, prompted by their own audio.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from indextts_ray.data.config import PromptConfig


def stable_hash(text: str, salt: int | str = 0) -> int:
    """64-bit hash that is the same on every machine and Python run (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\x1f{text}".encode(), digest_size=8).digest(), "little")


@dataclass
class Pairing:
    candidates: np.ndarray  # (n, K) int64 row indices, -1 = none; row i itself only under single_utterance=self
    reject: list[str | None]  # reason code per row, None = paired
    single_utterance_speakers: list[str] = field(default_factory=list)
    other_emotion_prompts: int = 0  # same_emotion=prefer rows prompted by another emotion


def pair_prompts(ids: list[str], speakers: list[str], emotions: list[str | None], cfg: PromptConfig) -> Pairing:
    """Prompt candidates for every row (see the module docstring)."""
    n = len(ids)
    reject: list[str | None] = [None] * n
    if n == 0:
        return Pairing(np.full((0, cfg.candidates), -1, dtype=np.int64), reject)
    order_key = np.array([stable_hash(i, cfg.seed) for i in ids], dtype=np.uint64)
    spk_codes = _codes(speakers)
    spk_sizes = np.bincount(spk_codes)
    cand = _cyclic_candidates(spk_codes, order_key, cfg.candidates)
    groups, group_sizes, other_emotion = spk_codes, spk_sizes, 0
    if cfg.same_emotion != "no":
        groups = _codes([f"{s}\x1f{e or ''}" for s, e in zip(speakers, emotions)])
        group_sizes = np.bincount(groups)
        in_group = group_sizes[groups] >= 2
        # `prefer`: rows alone in their emotion group keep the speaker-wide candidates (counted)
        cand[in_group] = _cyclic_candidates(groups, order_key, cfg.candidates)[in_group]
        if cfg.same_emotion == "prefer":
            other_emotion = int((~in_group & (spk_sizes[spk_codes] >= 2)).sum())
        else:
            cand[~in_group] = -1

    singles = spk_sizes[spk_codes] < 2
    for i in np.flatnonzero(singles):
        if cfg.single_utterance == "self":
            cand[i, 0] = i
        else:
            reject[i] = "single_utterance_speaker"
    if cfg.same_emotion == "require":
        for i in np.flatnonzero(~singles & (group_sizes[groups] < 2)):
            reject[i] = "no_same_emotion_prompt"
    single_names = sorted({speakers[i] for i in np.flatnonzero(singles)})
    return Pairing(cand, reject, single_names, other_emotion)


def _codes(values: list[str]) -> np.ndarray:
    """Dense integer codes (first-seen order; candidates do not depend on the codes' values)."""
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))


def _cyclic_candidates(groups: np.ndarray, key: np.ndarray, k: int) -> np.ndarray:
    """(n, k): for each row, the next k rows (cyclic) of its group in `key` order, never the row itself."""
    n = groups.size
    cand = np.full((n, k), -1, dtype=np.int64)
    order = np.lexsort((key, groups))  # by group, then by hash
    g_sorted = groups[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    sizes = np.diff(np.r_[starts, n])
    start_of = np.repeat(starts, sizes)
    size_of = np.repeat(sizes, sizes)
    pos = np.arange(n) - start_of
    for j in range(1, k + 1):
        ok = j < size_of  # a group of s rows has s - 1 other rows
        nxt = order[start_of + (pos + j) % size_of]
        cand[order[ok], j - 1] = nxt[ok]
    return cand
