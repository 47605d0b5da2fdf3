"""The utterance store: prepared shards as Arrow IPC files, read whole or by global row number.

Why Arrow IPC and not Parquet (`benchmarks/random_access.py` measures both): training draws a prompt for
every target each epoch, so rows are fetched in random order. A Parquet row costs decoding its whole row
group; a memory-mapped IPC record batch is sliced without decoding or copying, so one row costs the bytes
of that row. Sequential scans (speakers, statistics) read the columns they name, as with Parquet.

    <split>/shard-00000.arrow   record batches of BATCH_ROWS rows, schema `schema.UTTERANCE_SCHEMA`

Rows are numbered globally over a list of files (file after file); `RowStore` keeps only the row count
of each file and of each record batch of the files it has open, so its memory does not grow with the
number of rows.

Shards may live on an object store (`storage.py`: s3://, gs://): a reader then fetches the file footer and,
per row, the record batch holding it (ranged GETs, the last few batches of each open file cached), never the
whole file. The footer's `indextts_ray.batch_rows` lists the rows of each record batch, so counting rows and
locating a row need no batch read (files written before it have their batches read once instead).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa

from indextts_ray import storage
from indextts_ray.errors import DataError

SHARD_SUFFIX = ".arrow"
SHARD_GLOB = f"shard-*{SHARD_SUFFIX}"
BATCH_ROWS = 64  # rows per record batch: the unit a remote (non-mmap) reader fetches
BATCH_ROWS_KEY = b"indextts_ray.batch_rows"  # footer metadata: rows of each record batch, comma-separated
REMOTE_BATCH_CACHE = 4  # record batches kept per open remote file (consecutive rows share a GET)


def list_shards(split_dir: str | Path) -> list[Path] | list[str]:
    """The shard files of one split folder (paths, or URIs on an object store), in order; raises when there
    are none."""
    if storage.is_remote(split_dir):
        files = storage.glob(split_dir, SHARD_GLOB)
    else:
        files = sorted(Path(split_dir).glob(SHARD_GLOB))
    if not files:
        raise DataError(f"no {SHARD_GLOB} files in {split_dir}: run `indextts-ray prepare` first "
                        "(folders prepared before schema 2 hold .parquet shards: prepare them again)")
    return files


def write_shard_file(table: pa.Table, path: str | Path) -> None:
    """Write `table` as an uncompressed Arrow IPC file (uncompressed buffers can be memory-mapped) to a local
    path; the footer records the rows of each record batch."""
    batches = table.to_batches(max_chunksize=BATCH_ROWS)
    meta = {BATCH_ROWS_KEY: ",".join(str(b.num_rows) for b in batches).encode()}
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, metadata=meta) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _open(path: str | Path, columns: list[str] | None = None) -> pa.ipc.RecordBatchFileReader:
    source = storage.open_input_file(path)
    if columns is None or not storage.is_remote(path):
        return pa.ipc.open_file(source)
    # remote: fetch only the named columns' buffers (a memory map touches only those pages anyway)
    names = pa.ipc.open_file(source).schema.names
    return pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns]))


def _batch_rows(reader: pa.ipc.RecordBatchFileReader) -> list[int]:
    raw = (reader.metadata or {}).get(BATCH_ROWS_KEY)
    if raw is not None:
        return [int(n) for n in raw.split(b",")] if raw else []
    return [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]  # files from before the key


def read_schema(path: str | Path) -> pa.Schema:
    return _open(path).schema


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A whole shard (memory-mapped, or only the named columns' buffers fetched from a store)."""
    table = _open(path, columns).read_all()
    return table.select(columns) if columns is not None else table


def row_counts(files: list) -> np.ndarray:
    """Rows of each file (footers only)."""
    return np.asarray([sum(_batch_rows(_open(f))) for f in files], dtype=np.int64)


class _OpenShard:
    def __init__(self, path: str | Path):
        self.reader = _open(path)
        self.starts = np.concatenate([[0], np.cumsum(_batch_rows(self.reader))]).astype(np.int64)
        # memory-mapped batches cost nothing to get again; remote ones a GET each: keep the last few
        self._batches: OrderedDict[int, pa.RecordBatch] | None = OrderedDict() if storage.is_remote(path) else None

    def _batch(self, b: int) -> pa.RecordBatch:
        if self._batches is None:
            return self.reader.get_batch(b)
        if b not in self._batches:
            self._batches[b] = self.reader.get_batch(b)
            if len(self._batches) > REMOTE_BATCH_CACHE:
                self._batches.popitem(last=False)
        self._batches.move_to_end(b)
        return self._batches[b]

    def row(self, local: int) -> pa.RecordBatch:
        b = int(np.searchsorted(self.starts, local, side="right") - 1)
        return self._batch(b).slice(local - int(self.starts[b]), 1)


class RowStore:
    """Random access to rows of `files` by global row number (file after file).

    Args:
        files: shard files, in the order that defines global row numbers.
        counts: rows per file, when already known (saves reading the footers).
        max_open: files kept open at once (least recently used are closed).
    """

    def __init__(self, files: list, counts: np.ndarray | None = None, max_open: int = 64):
        self.files = [f if storage.is_remote(f) else Path(f) for f in files]
        counts = row_counts(self.files) if counts is None else np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()
        self._max_open = max_open

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, f: int) -> _OpenShard:
        if f in self._open:
            self._open.move_to_end(f)
        else:
            self._open[f] = _OpenShard(self.files[f])
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        return self._open[f]

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The rows in the given order (duplicates allowed), optionally only some columns."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row numbers outside [0, {len(self)})")
        file_of = np.searchsorted(self.starts, rows, side="right") - 1
        pieces = []
        for r, f in zip(rows.tolist(), file_of.tolist()):
            batch = self._shard(f).row(r - int(self.starts[f]))
            pieces.append(batch.select(columns) if columns is not None else batch)
        if not pieces:
            schema = _open(self.files[0]).schema if self.files else pa.schema([])
            return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()
        return pa.Table.from_batches(pieces)
