"""Random access to prepared Parquet shards by global row index, reading whole row groups and caching them.

The bucketing plan needs only lengths; `ShardIndex` reads those few small columns of every shard once
(2.7M rows: a few seconds, tens of MB) and maps a global row index to (shard, row). Rows of one batch come
from one shuffle window, i.e. a few row groups, so the row-group LRU cache keeps reads sequential-ish.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indextts_ray.errors import DataError

INDEX_COLUMNS = ["id", "speaker", "n_text", "n_codes", "prompt_frames"]


def list_shards(split_dir: str | Path) -> list[Path]:
    files = sorted(Path(split_dir).glob("shard-*.parquet"))
    if not files:
        raise DataError(f"no shard-*.parquet files in {split_dir}: run `indextts-ray prepare` first")
    return files


class ShardIndex:
    """Lengths and speakers of every row of a split, plus the (file, row) of each global row index."""

    def __init__(self, files: list[Path], keep_speakers: set[str] | None = None):
        self.files = [Path(f) for f in dict.fromkeys(files)]  # de-duplicated, order kept
        tables = []
        for i, f in enumerate(self.files):
            t = pq.read_table(f, columns=INDEX_COLUMNS)
            t = t.append_column("file", pa.array(np.full(len(t), i, dtype=np.int32)))
            t = t.append_column("row", pa.array(np.arange(len(t), dtype=np.int64)))
            tables.append(t)
        table = pa.concat_tables(tables)
        if keep_speakers is not None:
            mask = np.isin(table.column("speaker").to_numpy(zero_copy_only=False), list(keep_speakers))
            self.n_filtered = int((~mask).sum())
            table = table.filter(pa.array(mask))
        else:
            self.n_filtered = 0
        self.ids = table.column("id").to_numpy(zero_copy_only=False)
        self.speakers = table.column("speaker").to_numpy(zero_copy_only=False)
        self.file = table.column("file").to_numpy()
        self.row = table.column("row").to_numpy()
        n_text = table.column("n_text").to_numpy().astype(np.int64)
        n_codes = table.column("n_codes").to_numpy().astype(np.int64)
        # GPT positions per row (start/stop tokens on both text and codes); the prompt runs through the
        # conditioners, not the GPT, so it does not count towards the budget.
        self.lengths = n_text + n_codes + 4

    def __len__(self) -> int:
        return len(self.lengths)


class EmotionLookup:
    """Emotion id of any row of the prepared set by id, for labelling the clip the emotion vector is computed
    from: the *prompt* (another utterance), whose emotion may differ from the target row's."""

    def __init__(self, files: list[Path]):
        tables = [pq.read_table(f, columns=["id", "emotion_id"]) for f in dict.fromkeys(files)]
        table = pa.concat_tables(tables) if tables else pa.table({"id": [], "emotion_id": []})
        ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
        order = np.argsort(ids)
        self._ids = ids[order]
        self._emotion = table.column("emotion_id").to_numpy(zero_copy_only=False).astype(np.int64)[order]

    def __call__(self, ids: list[str]) -> np.ndarray:
        """Emotion ids (-1 = unknown or not in the set)."""
        query = np.asarray(ids, dtype=self._ids.dtype if len(self._ids) else str)
        pos = np.clip(np.searchsorted(self._ids, query), 0, max(len(self._ids) - 1, 0))
        found = (self._ids[pos] == query) if len(self._ids) else np.zeros(len(query), bool)
        return np.where(found, self._emotion[pos] if len(self._ids) else -1, -1)


class RowReader:
    """Fetch rows by global index with an LRU cache of decoded row groups."""

    def __init__(self, index: ShardIndex, cache_groups: int = 64):
        self.index = index
        self._files = [pq.ParquetFile(f) for f in index.files]
        self._group_starts = [
            np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]) for pf in self._files
        ]
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._cache_groups = cache_groups

    def _group(self, file: int, group: int) -> pa.Table:
        key = (file, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        table = self._files[file].read_row_group(group)
        self._cache[key] = table
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return table

    def read(self, rows: np.ndarray) -> pa.Table:
        """Rows in the given order."""
        pieces = []
        for r in rows:
            f, local = int(self.index.file[r]), int(self.index.row[r])
            starts = self._group_starts[f]
            g = int(np.searchsorted(starts, local, side="right") - 1)
            pieces.append(self._group(f, g).slice(local - int(starts[g]), 1))
        return pa.concat_tables(pieces)
