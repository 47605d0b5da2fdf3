"""Speaker prompts drawn per epoch: a pure function of (corpus columns, policy, seed, epoch, target row).

Every accepted utterance is stored once with its own features; which utterance prompts which target is
decided here, at ingest, so the pairs change every epoch (as a stream of fresh prompt/target pairs should)
and changing `data.prompt.*` never re-extracts a feature.

    target t of speaker s   candidates = pool rows of s (same emotion: `require` / `prefer`), t excluded
                            prompt = candidates[hash(seed, epoch, t) mod len(candidates)]
                            crop start = hash'(seed, epoch, t) mod (frames - max_frames + 1)

No candidate: `single_utterance: self` prompts the row with itself, `reject` leaves it out of the epoch
(and `same_emotion: require` leaves out rows whose speaker has no other utterance of their emotion); the
plan counts both. All vectorised: one sort of the pool per epoch, no per-row Python.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from indextts_ray.data.config import PromptConfig

REASONS = ("ok", "single_utterance_speaker", "no_same_emotion_prompt")  # index = `Draw.reason`


class Draw(NamedTuple):
    prompt: np.ndarray  # (n_targets,) row number of each target's prompt, -1 = left out
    reason: np.ndarray  # (n_targets,) int8 index into REASONS
    other_emotion: int  # `prefer` targets prompted by another emotion (no same-emotion candidate)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of uint64 values (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_hash(seed: int, epoch: int, rows: np.ndarray, stream: int) -> np.ndarray:
    """Independent uint64 per (seed, epoch, stream, row)."""
    with np.errstate(over="ignore"):
        base = mix64(np.uint64((seed * 1_000_003 + epoch) % 2**64) * np.uint64(4) + np.uint64(stream))
        return mix64(np.asarray(rows, dtype=np.uint64) + base)


def draw_prompts(speaker: np.ndarray, emotion: np.ndarray, pool: np.ndarray, targets: np.ndarray,
                 policy: PromptConfig, seed: int, epoch: int) -> Draw:
    """A prompt row for each target row.

    Args:
        speaker, emotion: integer codes of every corpus row (emotion: any code for "unlabelled", e.g. -1).
        pool: bool mask of the rows that may prompt (e.g. train rows for train targets).
        targets: row numbers to draw for.
        policy: `data.prompt` (same_emotion, single_utterance, seed).
    """
    targets = np.asarray(targets, dtype=np.int64)
    speaker = np.asarray(speaker, dtype=np.int64)
    emotion = np.asarray(emotion, dtype=np.int64)
    key = row_hash(seed + policy.seed, epoch, targets, 0)
    prompt, n_spk = _pick(speaker, pool, targets, key)
    reason = np.zeros(len(targets), dtype=np.int8)
    other = 0
    if policy.same_emotion != "no":
        span = int(emotion.max(initial=0) - emotion.min(initial=0)) + 1
        group = speaker * span + (emotion - emotion.min(initial=0))
        same, n_same = _pick(group, pool, targets, key)
        has_same = n_same > 0
        prompt = np.where(has_same, same, prompt if policy.same_emotion == "prefer" else -1)
        if policy.same_emotion == "require":
            reason[~has_same & (n_spk > 0)] = 2
        else:
            other = int((~has_same & (n_spk > 0)).sum())
    single = n_spk == 0
    if policy.single_utterance == "self":
        prompt[single] = targets[single]
    else:
        reason[single] = 1
        prompt[single] = -1
    return Draw(prompt, reason, other)


def _pick(group: np.ndarray, pool: np.ndarray, targets: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chosen row or -1, number of candidates) per target: a uniform pick among the pool rows of its group,
    never the target itself."""
    n_rows = np.int64(len(group))
    members = np.flatnonzero(pool)
    order_key = group[members] * n_rows + members  # by group, then row number (int64: groups * rows < 2**63)
    sort = np.argsort(order_key, kind="stable")
    members, order_key = members[sort], order_key[sort]
    tg = group[targets]
    first = np.searchsorted(order_key, tg * n_rows, side="left")
    size = np.searchsorted(order_key, (tg + 1) * n_rows, side="left") - first
    at = np.searchsorted(order_key, tg * n_rows + targets, side="left")  # the target's own slot, if it has one
    self_in = (at < first + size) & (members[np.minimum(at, max(len(members) - 1, 0))] == targets) \
        if len(members) else np.zeros(len(targets), bool)
    n = size - self_in
    k = (key % np.maximum(n, 1).astype(np.uint64)).astype(np.int64)
    k = np.where(self_in & (first + k >= at), k + 1, k)  # step over the target's own slot
    chosen = members[np.minimum(first + k, len(members) - 1)] if len(members) else np.zeros(len(targets), np.int64)
    return np.where(n > 0, chosen, -1).astype(np.int64), n.astype(np.int64)


def crop_starts(frames: np.ndarray, max_frames: int, seed: int, epoch: int, targets: np.ndarray) -> np.ndarray:
    """Start frame of each prompt's random crop of at most `max_frames` frames (0 when it is shorter)."""
    spare = np.maximum(np.asarray(frames, dtype=np.int64) - max_frames, 0)
    key = row_hash(seed, epoch, targets, 1)
    return (key % (spare + 1).astype(np.uint64)).astype(np.int64)
