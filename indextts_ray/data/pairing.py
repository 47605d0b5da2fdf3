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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.config import PromptConfig


def stable_hash(text: str, salt: int | str = 0) -> int:
    """64-bit hash that is the same on every machine and Python run (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\x1f{text}".encode(), digest_size=8).digest(), "little")


def stable_hashes(values: Iterable[str], salt: int | str = 0) -> np.ndarray:
    """`stable_hash` of every value, as uint64 (no Python int per value)."""
    prefix, blake2b = f"{salt}\x1f", hashlib.blake2b
    digests = b"".join([blake2b(f"{prefix}{v}".encode(), digest_size=8).digest() for v in values])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def hash_column(column: pa.Array | pa.ChunkedArray, salt: int | str = 0) -> np.ndarray:
    """`stable_hashes` of a string column."""
    return hash_columns(column, [salt])[0]


def hash_columns(column: pa.Array | pa.ChunkedArray, salts: list[int | str],
                 slice_rows: int = 65_536) -> list[np.ndarray]:
    """`stable_hashes` of a string column for each salt, in one pass (`slice_rows` values in Python at a time)."""
    prefixes, blake2b = [f"{salt}\x1f".encode() for salt in salts], hashlib.blake2b
    parts: list[list[np.ndarray]] = [[] for _ in salts]
    for i in range(0, len(column), slice_rows):
        values = [v.encode() for v in column.slice(i, slice_rows).to_pylist()]  # UTF-8 of salt + v = the two joined
        for prefix, out in zip(prefixes, parts):
            digests = b"".join([blake2b(prefix + v, digest_size=8).digest() for v in values])
            out.append(np.frombuffer(digests, dtype="<u8").astype(np.uint64))
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.uint64) for p in parts]


def column_codes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(dense int64 code per row, the distinct values in order of first appearance) of a column without nulls."""
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


@dataclass
class Pairing:
    candidates: np.ndarray  # (n, K) int64 row indices, -1 = none; row i itself only under single_utterance=self
    reject: list[str | None]  # reason code per row, None = paired
    single_utterance_speakers: list[str] = field(default_factory=list)
    other_emotion_prompts: int = 0  # same_emotion=prefer rows prompted by another emotion


REJECT_REASONS = (None, "single_utterance_speaker", "no_same_emotion_prompt")  # index = `PairCodes.reason`


class PairCodes(NamedTuple):
    candidates: np.ndarray  # (n, K), as `Pairing.candidates`
    reason: np.ndarray  # (n,) int8 index into REJECT_REASONS
    singles: np.ndarray  # (n,) bool: the row's speaker has one utterance
    other_emotion_prompts: int


def pair_prompts(ids: list[str], speakers: list[str], emotions: list[str | None], cfg: PromptConfig) -> Pairing:
    """Prompt candidates for every row (see the module docstring)."""
    n = len(ids)
    if n == 0:
        return Pairing(np.full((0, cfg.candidates), -1, dtype=np.int64), [])
    p = pair_codes(stable_hashes(ids, cfg.seed), _codes(speakers), _codes([e or "" for e in emotions]), cfg)
    single_names = sorted({speakers[i] for i in np.flatnonzero(p.singles)})
    return Pairing(p.candidates, [REJECT_REASONS[r] for r in p.reason.tolist()], single_names,
                   p.other_emotion_prompts)


def pair_codes(order_key: np.ndarray, speakers: np.ndarray, emotions: np.ndarray, cfg: PromptConfig) -> PairCodes:
    """`pair_prompts` on arrays: each row's hash of (seed, id), speaker code and emotion code (None = "")."""
    n = order_key.size
    spk_sizes = np.bincount(speakers, minlength=1)
    cand = _cyclic_candidates(speakers, order_key, cfg.candidates)
    groups, group_sizes, other_emotion = speakers, spk_sizes, 0
    if cfg.same_emotion != "no":
        _, groups = np.unique(speakers * (int(emotions.max(initial=0)) + 1) + emotions, return_inverse=True)
        groups = groups.reshape(-1)
        group_sizes = np.bincount(groups, minlength=1)
        in_group = group_sizes[groups] >= 2
        # `prefer`: rows alone in their emotion group keep the speaker-wide candidates (counted)
        cand[in_group] = _cyclic_candidates(groups, order_key, cfg.candidates)[in_group]
        if cfg.same_emotion == "prefer":
            other_emotion = int((~in_group & (spk_sizes[speakers] >= 2)).sum())
        else:
            cand[~in_group] = -1

    singles = spk_sizes[speakers] < 2
    reason = np.zeros(n, dtype=np.int8)
    if cfg.single_utterance == "self":
        cand[singles, 0] = np.flatnonzero(singles)
    else:
        reason[singles] = 1
    if cfg.same_emotion == "require":
        reason[~singles & (group_sizes[groups] < 2)] = 2
    return PairCodes(cand, reason, singles, other_emotion)


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
