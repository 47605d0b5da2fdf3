"""Stable hashes of ids and speakers (the same on every machine and Python run) and dense column codes.

They fix the train/val split, the shard order and the k-means sample before any audio is read. Prompt
pairs are drawn at training time (`data/prompts.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
