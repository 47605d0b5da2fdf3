"""Random row access: Parquet (the old shard format) vs Arrow IPC (the utterance store), same rows.

    .venv/bin/python benchmarks/random_access.py            # 40 shards x 256 rows, 64 KiB feature blobs
    .venv/bin/python benchmarks/random_access.py --rows-per-shard 512 --blob-kib 256

Training fetches every target's prompt from another utterance each epoch, in random order. This writes the
same synthetic utterances (ids, codes, a float16 feature blob) as zstd Parquet with 256-row groups (what
`prepare` wrote before schema 2) and as uncompressed Arrow IPC files with 64-row record batches
(`data.store`), then reads the same random rows one at a time (as a fetch task does) from each: Parquet
decodes the row's whole row group, IPC slices a memory-mapped record batch. Prints rows/s and bytes read per
row, then key=value lines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indextts_ray.data.store import RowStore, write_shard_file  # noqa: E402


def make_table(n: int, blob_bytes: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, 8192, int(k)).astype(np.int32) for k in rng.integers(100, 500, n)]
    return pa.table({
        "id": [f"u{seed:04d}_{i:05d}" for i in range(n)],
        "codes": pa.array(codes, pa.list_(pa.int32())),
        "feats": pa.array([rng.bytes(blob_bytes) for _ in range(n)], pa.binary()),
    })


class ParquetRows:
    """Random rows of Parquet files: a row costs its row group (with a one-group cache, as a reader would)."""

    def __init__(self, files: list[Path]):
        self.files = [pq.ParquetFile(f) for f in files]
        self.group_rows = self.files[0].metadata.row_group(0).num_rows
        self.rows = self.files[0].metadata.num_rows
        self._cached = (None, None)

    def take(self, rows: np.ndarray) -> pa.Table:
        out = []
        for r in rows.tolist():
            f, local = divmod(r, self.rows)
            g, k = divmod(local, self.group_rows)
            if self._cached[0] != (f, g):
                self._cached = ((f, g), self.files[f].read_row_group(g))
            out.append(self._cached[1].take([k]))  # a copy: a slice would pin the whole decoded group
        return pa.concat_tables(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--rows-per-shard", type=int, default=256 * 4)
    ap.add_argument("--blob-kib", type=int, default=64, help="feature bytes per row (w2v-BERT: ~100 KiB per second)")
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="random_access_"))
    pq_files, ipc_files = [], []
    for s in range(args.shards):
        t = make_table(args.rows_per_shard, args.blob_kib * 1024, s)
        pq_files.append(work / f"shard-{s:05d}.parquet")
        pq.write_table(t, pq_files[-1], compression="zstd", row_group_size=256)
        ipc_files.append(work / f"shard-{s:05d}.arrow")
        write_shard_file(t, ipc_files[-1])
    n = args.shards * args.rows_per_shard
    rows = np.random.default_rng(0).integers(0, n, args.reads)
    sizes = {"parquet": sum(f.stat().st_size for f in pq_files), "ipc": sum(f.stat().st_size for f in ipc_files)}

    results = {}
    for name, reader in (("parquet", ParquetRows(pq_files)), ("ipc", RowStore(ipc_files))):
        reader.take(rows[:10])  # open files, warm the page cache path
        t0 = time.perf_counter()
        got = reader.take(rows)
        dt = time.perf_counter() - t0
        assert got.column("id").to_pylist() == RowStore(ipc_files).take(rows, ["id"]).column("id").to_pylist()
        results[name] = args.reads / dt
        print(f"{name:<8} {args.reads / dt:>10,.0f} random rows/s   ({sizes[name] / n / 1024:,.1f} KiB per row on disk)")
    ratio = results["ipc"] / results["parquet"]
    print(f"Arrow IPC / Parquet random-row throughput = {ratio:.1f}x (row group 256 vs record batch 64, "
          f"{args.blob_kib} KiB blobs)")
    print(f"parquet_rows_per_s={results['parquet']:.0f}")
    print(f"ipc_rows_per_s={results['ipc']:.0f}")
    print(f"ipc_over_parquet={ratio:.2f}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
