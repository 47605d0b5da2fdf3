"""Data pipeline at the reference scale: a 2.7M-row long-tailed manifest → validation → shards → speakers.

    python benchmarks/data_scale.py                      # 2,783,826 rows, 132,389 speakers (14,244 with >= 50)
    python benchmarks/data_scale.py --rows 200000 --speakers 9500 --min50 1000   # a quick run

The manifest's rows point at a small pool of synthetic wavs (`indextts_ray.data.synth`), so no audio is
decoded: this measures the metadata path of `indextts-ray prepare` with its own functions
(`scan_manifest` validation + text normalisation on `data.scan_workers` processes, BPE tokenisation,
`plan_shards`), writes each planned shard's rows as an Arrow IPC shard (metadata only: no
features, which need the audio), runs `build_speaker_mapping` over those shards, and compares Ray Data's read
throughput of the shards (one pyarrow read per file in Ray Data `map_batches` tasks)
with a plain pyarrow read. 0.05 % of the rows are broken on purpose (not JSON,
missing text, negative duration, duplicate id) and must come back as rejections. Texts come from a pool of
10k sentences, but nothing is cached per text: every row is normalised and tokenised.

One line per phase: `phase | rows | rows/s | peak RSS self (this phase) | children | wall s | cpu s`. Peak RSS
of this process is reset between phases (/proc/self/clear_refs); `children` is getrusage(RUSAGE_CHILDREN)
(the largest scan worker, once it has exited); cpu counts this process and its exited children. Then each
target with PASS/MISS (2-core CPU machine): validation + tokenisation + sharding + speaker mapping < 300 s;
peak RSS < 3 GiB, as getrusage self + children and, stricter, self + scan_workers x the largest child (the
scan workers run at the same time); Ray Data ÷ pyarrow read throughput >= 0.5. The load average is printed
with the numbers: on a shared machine, wall time includes waiting for the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from indextts_ray.data.config import DataConfig
from indextts_ray.data.metadata import scan_manifest, tokenize_table
from indextts_ray.data.plan import plan_shards
from indextts_ray.data.speakers import build_speaker_mapping
from indextts_ray.data.store import SHARD_GLOB, read_table, write_shard_file
from indextts_ray.data.synth import make_corpus, make_text
from indextts_ray.data.tokenizer import load_tokenizer, train_tokenizer
from indextts_ray.model.config import EMOTION_LABELS

GIB = 2**30


# ----------------------------------------------------------------------------- measuring

TARGET_SECONDS, TARGET_RSS, TARGET_READ_RATIO = 300.0, 3 * GIB, 0.5
CORE = ("validate (metadata)", "tokenize (BPE)", "plan + shard", "speakers (shards)")


def _reset_peak_rss() -> bool:
    try:  # Linux: "5" resets VmHWM (the peak resident set) of this process
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # lifetime peak where /proc is absent


def _children() -> tuple[int, float]:
    """(largest exited child's peak RSS in bytes, CPU seconds of exited children)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_maxrss * 1024, r.ru_utime + r.ru_stime


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stage(name: str, rows: int | Callable[[object], int], fn: Callable[[], object], log: list[dict]) -> object:
    """Run `fn`, print its line (see the module docstring), append the numbers to `log`."""
    _reset_peak_rss()
    t0, c0, (_, cc0) = time.perf_counter(), time.process_time(), _children()
    result = fn()
    dt, children_rss, cc1 = time.perf_counter() - t0, *_children()
    cpu = time.process_time() - c0 + cc1 - cc0
    n = rows(result) if callable(rows) else rows
    rss = _peak_rss()
    print(f"{name:<22}| rows {n:>11,} | {n / dt:>11,.0f} rows/s | peak RSS {rss / GIB:5.2f} GiB | children "
          f"{children_rss / GIB:5.2f} GiB | {dt:7.1f} s | cpu {cpu:7.1f} s", flush=True)
    log.append({"stage": name, "rows": n, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2),
                "rows_per_s": round(n / dt), "peak_rss": rss, "children_peak_rss": children_rss, "load": _load()})
    return result


def verdict(name: str, value: str, target: str, ok: bool) -> dict:
    print(f"  {name:<52} {value:>12}  (target {target:<8}) {'PASS' if ok else 'MISS'}", flush=True)
    return {"target": name, "value": value, "goal": target, "pass": ok}


# ----------------------------------------------------------------------------- the manifest


def speaker_counts(rows: int, speakers: int, with_50: int, seed: int) -> np.ndarray:
    """Utterances per speaker: long-tailed, summing to `rows`, exactly `with_50` speakers with >= 50."""
    if not 0 < with_50 < speakers or rows < 50 * with_50 + (speakers - with_50):
        raise SystemExit("need 0 < min50 < speakers and rows >= 50 * min50 + (speakers - min50)")
    rng = np.random.default_rng(seed)
    small = np.clip(np.floor(rng.lognormal(1.6, 1.0, speakers - with_50)), 1, 49).astype(np.int64)
    budget = rows - small.sum()
    if budget < 50 * with_50:  # small speakers took too much: shrink them towards 1
        small = np.maximum(1, small * (rows - 50 * with_50) // max(1, small.sum()) - 1)
        budget = rows - small.sum()
    # big speakers: 50 + a Pareto tail scaled to the rows left, then exact by spreading the remainder
    tail = rng.pareto(1.3, with_50) + 0.05
    big = 50 + np.floor(tail / tail.sum() * (budget - 50 * with_50)).astype(np.int64)
    big[np.argsort(-big)[: budget - big.sum()]] += 1
    counts = np.concatenate([big, small])
    assert counts.sum() == rows and (counts >= 50).sum() == with_50, (counts.sum(), (counts >= 50).sum())
    return counts


def write_manifest(path: Path, counts: np.ndarray, pool: list[dict], seed: int, bad_every: int) -> dict[str, int]:
    """JSONL rows in shuffled speaker order; every `bad_every`-th row broken in one of four ways."""
    rng = np.random.default_rng(seed + 1)
    texts = [json.dumps(make_text(rng, lang, "neutral"), ensure_ascii=False)
             for lang in ("ko", "en") for _ in range(5000)]
    spk = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    spk = spk[rng.permutation(len(spk))]
    text_idx = rng.integers(0, len(texts), len(spk))
    audio_idx = rng.integers(0, len(pool), len(spk))
    emotions = EMOTION_LABELS
    injected = {"not_json": 0, "missing_field": 0, "bad_duration": 0, "duplicate_id": 0}
    kinds = list(injected)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(spk)):
            a = pool[audio_idx[i]]
            line = (f'{{"id": "utt{i:08d}", "audio_path": "{a["audio_path"]}", "text": {texts[text_idx[i]]}, '
                    f'"speaker": "s{spk[i]:06d}", "language": "{a["language"]}", "duration": {a["duration"]}, '
                    f'"emotion": "{emotions[i % len(emotions)]}"}}')
            if bad_every and i % bad_every == bad_every - 1:
                kind = kinds[(i // bad_every) % 4]
                injected[kind] += 1
                if kind == "not_json":
                    line = line[:-5]
                elif kind == "missing_field":
                    line = line.replace(f', "text": {texts[text_idx[i]]}', "")
                elif kind == "bad_duration":
                    line = line.replace(f'"duration": {a["duration"]}', '"duration": -1')
                else:
                    line = line.replace(f'"id": "utt{i:08d}"', '"id": "utt00000000"')
            f.write(line + "\n")
    return injected


# ----------------------------------------------------------------------------- the stages


def write_metadata_shards(plans, out: Path, workers: int) -> int:
    """Each planned shard's rows as an Arrow IPC shard, on `workers` threads (prepare writes shards on
    `data.workers` Ray actors; Arrow's take and IPC writer run without the GIL)."""
    for split in {p.split for p in plans}:
        (out / split).mkdir(parents=True, exist_ok=True)

    def write(p) -> int:
        rows = p.rows
        write_shard_file(rows, out / p.name)
        return rows.num_rows

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(write, plans))


def read_pyarrow(files: list[Path], batch_rows: int) -> int:
    n = 0
    for f in files:
        for batch in read_table(f).to_batches(max_chunksize=batch_rows):
            n += batch.num_rows
    return n


def _read_files(batch):
    import pyarrow as pa

    return pa.concat_tables([read_table(p) for p in batch.column("path").to_pylist()])


def read_ray(files: list[Path], batch_rows: int) -> int:
    import ray

    names = ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=min(len(files), 8))
    ds = names.map_batches(_read_files, batch_size=1, batch_format="pyarrow", zero_copy_batch=True, num_cpus=0.25)
    return sum(b.num_rows for b in ds.iter_batches(batch_size=batch_rows, batch_format="pyarrow", prefetch_batches=4))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_783_826)
    ap.add_argument("--speakers", type=int, default=132_389)
    ap.add_argument("--min50", type=int, default=14_244, help="speakers with >= 50 utterances")
    ap.add_argument("--bad-every", type=int, default=2000, help="break every N-th row (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-rows", type=int, default=DataConfig().shard_rows,
                    help="data.shard_rows (default: the prepare default; metadata-only rows are small, so "
                         "a larger value gives files closer to real shard sizes)")
    ap.add_argument("--scan-workers", type=int, default=DataConfig().scan_workers, help="data.scan_workers")
    ap.add_argument("--work", type=Path, help="work folder (default: a temp folder, deleted unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"data_scale on {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}); "
          f"load average {_load()}; work {work}", flush=True)
    log: list[dict] = []
    results: list[dict] = []
    try:
        corpus = make_corpus(work / "pool", n_speakers=4, utts_per_speaker=8, n_long_recordings=0, seed=args.seed)
        pool = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
        for r in pool:
            r["audio_path"] = f"pool/{r['audio_path']}"
        manifest = work / "manifest.jsonl"
        counts = speaker_counts(args.rows, args.speakers, args.min50, args.seed)
        injected = stage("generate manifest", args.rows,
                         lambda: write_manifest(manifest, counts, pool, args.seed, args.bad_every), log)
        print(f"  {args.rows:,} rows, {len(counts):,} speakers, {(counts >= 50).sum():,} with >= 50, "
              f"max {counts.max():,}/speaker, {manifest.stat().st_size / 2**20:,.0f} MiB; broken rows {injected}")

        cfg = DataConfig(manifest=str(manifest), root=str(work), output_dir=str(work / "prepared"),
                         shard_rows=args.shard_rows, scan_workers=args.scan_workers)
        scan = stage("validate (metadata)", args.rows, lambda: scan_manifest(cfg, list(EMOTION_LABELS)), log)
        reasons: dict[str, int] = {}
        for r in scan.rejected:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        print(f"  accepted {scan.table.num_rows:,}, rejected {len(scan.rejected):,} {dict(sorted(reasons.items()))}")
        assert scan.table.num_rows + len(scan.rejected) == args.rows, "rows in != accepted + rejected"

        def tokenize() -> int:
            sample = scan.table.column("text_norm").slice(0, 200_000).to_pylist()
            tok = load_tokenizer(train_tokenizer(sample, work / "bpe", 2000, character_coverage=1.0))
            tokenize_table(scan, tok, 600)
            return scan.table.num_rows

        stage("tokenize (BPE)", lambda n: n, tokenize, log)
        out = work / "prepared"

        def shard() -> int:
            return write_metadata_shards(plan_shards(scan.table, cfg, feat_dim=1024), out, max(1, cfg.workers))

        written = stage("plan + shard", lambda n: n, shard, log)
        assert written + len(scan.rejected) == args.rows, "rows in != written + rejected"
        files = sorted(out.rglob(SHARD_GLOB))
        print(f"  {written:,} rows in {len(files):,} shards ({sum(f.stat().st_size for f in files) / 2**20:,.0f} MiB); "
              f"rows in {args.rows:,} = written {written:,} + rejected {len(scan.rejected):,}")
        scan.table = None  # the speaker count and the reads should not compete with the metadata in memory
        sm = stage("speakers (shards)", written, lambda: build_speaker_mapping(out, 500, 50), log)
        print("  " + sm.report().replace("\n", "\n  "))
        # this process's peak over the target phases (each phase's VmHWM: getrusage(RUSAGE_SELF) reads the same
        # counter, which the per-phase reset clears) and the largest exited child's (the scan workers)
        self_rss = max(s["peak_rss"] for s in log if s["stage"] in CORE)
        child_rss, _ = _children()
        stage("speakers (manifest)", args.rows, lambda: build_speaker_mapping(manifest, 500, 50), log)

        if not args.skip_ray:
            import ray

            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level="warning")
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            read_pyarrow(files, 8192)  # warm the page cache for both readers
            a = stage("read pyarrow", lambda n: n, lambda: read_pyarrow(files, 8192), log)
            # the first Ray Data pass also starts Ray's worker processes; the second is the steady state
            stage("read Ray Data (cold)", lambda n: n, lambda: read_ray(files, 8192), log)
            b = stage("read Ray Data (warm)", lambda n: n, lambda: read_ray(files, 8192), log)
            assert a == b == written, (a, b, written)
            ray.shutdown()

        print(f"targets (load average {_load()}):")
        core = sum(s["seconds"] for s in log if s["stage"] in CORE)
        core_rows = next(s["rows"] for s in log if s["stage"] == CORE[0])
        results.append(verdict("validation + tokenisation + sharding + speakers", f"{core:.1f} s",
                               f"< {TARGET_SECONDS:.0f} s", core < TARGET_SECONDS))
        print(f"  {'':<52} {core_rows / core:>12,.0f} rows/s overall")
        results.append(verdict("peak RSS, getrusage self + children", f"{(self_rss + child_rss) / GIB:.2f} GiB",
                               "< 3 GiB", self_rss + child_rss < TARGET_RSS))
        strict = self_rss + args.scan_workers * child_rss
        results.append(verdict(f"peak RSS, self + {args.scan_workers} x largest child", f"{strict / GIB:.2f} GiB",
                               "< 3 GiB", strict < TARGET_RSS))
        if not args.skip_ray:
            read = {s["stage"]: s["rows_per_s"] for s in log}
            ratio = read["read Ray Data (warm)"] / read["read pyarrow"]
            results.append(verdict("Ray Data (warm) / pyarrow read", f"{ratio:.2f}", ">= 0.5",
                                   ratio >= TARGET_READ_RATIO))
        if args.json:
            args.json.write_text(json.dumps(log + [{"stage": "targets", "results": results}], indent=2))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
