"""The training ingest at corpus scale: plan time, per-worker memory and throughput at 270k and 2.7M utterances.

    .venv/bin/python benchmarks/ingest_scale.py                         # 270,000 and 2,700,000 utterances
    .venv/bin/python benchmarks/ingest_scale.py --sizes 20000 200000 --batches 100   # a quick run
    .venv/bin/python benchmarks/ingest_scale.py --sizes 20000 60000 --batches 100 --stream-size 5000

For each size a synthetic prepared set is written straight in the store format (`data.store`, schema 2):
long-tailed speakers (as `data_scale.py`), 7 emotions, real code lengths (1-15 s at 50 Hz) and tiny feature
blobs (8-dim float16, 25 frames per second), 1 % of the rows in `val/`. Then:

* **plan**: the planner's work for one epoch, in this process: read the corpus index (`CorpusIndex`: lengths,
  speaker, emotion, frames of every row) and build the epoch plan (prompt draw + crops + token-budget batches);
* **stream**: a TorchTrainer with 2 workers (0.5 CPU each) whose loop streams `--batches` micro-batches per rank
  through `get_dataset_shard("train")` exactly as training does (planner cursor -> Ray Data entry generator ->
  fetch tasks -> rows grouped by entry -> `collate`), and records each worker's peak RSS before and after and
  its batches/s.

* **streaming features** (issue #22, `data.features.mode: streaming`): a `--stream-size` set whose rows point
  at a pool of synthetic wavs (1-15 s) with no stored features, and the same set with stored features; both
  streamed by the 2 workers with a simulated training step (`--step-ms`, sleeping: the GPU's time) after each
  micro-batch. Streaming runs the `builtin` extractor (8 mel bands, a 16-code k-means codebook fitted on the
  pool) as a Ray Data actor stage on CPU (`--feature-actors` per rank, 0.25 CPU in all), computing every prompt's features from
  its audio. Printed: the data-wait share of each mode (time in `next(stream)` + collate over the loop's time,
  after the first WARMUP micro-batches)
  and the bytes per utterance on disk of each.

Targets (issue #14): plan <= 60 s at 2.7M; per-worker peak RSS <= 2 GiB and <= 10 % growth from the smallest to
the largest size. Also printed: bytes per utterance on disk for the tiny dims and, on paper, for the real dims
(w2v-BERT 1024-dim float16 features at 50 Hz), before (schema 1: a prompt's features embedded in every row) and
after (schema 2: each utterance's own features once). Ends with key=value lines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from indextts_ray.data.schema import UTTERANCE_SCHEMA  # noqa: E402
from indextts_ray.data.store import write_shard_file  # noqa: E402

DIM, FPS, SHARD_ROWS = 8, 25, 4000
WARMUP = 1  # micro-batches per worker before the data-wait share is counted (the first: the pipeline's start)
GIB = 2**30


def write_corpus(root: Path, n: int, seed: int = 0, pool: list[dict] | None = None) -> Path:
    """A prepared set of `n` utterances (train + 1 % val) with tiny feature blobs, written shard by shard (or
    rows drawn from an audio `pool`, see `write_audio_corpus`)."""
    from data_scale import speaker_counts

    counts = speaker_counts(n, max(n // 20, 10), max(n // 200, 2), seed)
    speaker = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    speaker = speaker[rng.permutation(n)]
    is_val = rng.random(n) < 0.01
    for split, rows in (("train", np.flatnonzero(~is_val)), ("val", np.flatnonzero(is_val))):
        (root / split).mkdir(parents=True, exist_ok=True)
        for s, start in enumerate(range(0, len(rows), SHARD_ROWS)):
            idx = rows[start: start + SHARD_ROWS]
            write_shard_file(_shard_table(idx, speaker[idx], np.random.default_rng([seed, s, len(split)]), pool),
                             root / split / f"shard-{s:05d}.arrow")
    (root / "dataset.json").write_text(json.dumps({"schema_version": 2, "rows": n}))
    return root


def _lists(lengths: np.ndarray, values: np.ndarray, type_) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type_))


def _shard_table(idx: np.ndarray, speaker: np.ndarray, rng: np.random.Generator,
                 pool: list[dict] | None = None) -> pa.Table:
    m = len(idx)
    if pool is None:
        duration = rng.uniform(1.0, 15.0, m).astype(np.float32)
        frames = np.maximum(1, (FPS * duration).astype(np.int64))
        feats = rng.standard_normal(int(frames.sum()) * DIM).astype(np.float16).tobytes()
        ends = np.cumsum(frames) * DIM * 2
        blob_offsets = pa.array(np.concatenate([[0], ends]).astype(np.int64), pa.int64())
        feats_col = pa.LargeBinaryArray.from_buffers(pa.large_binary(), m, [None, blob_offsets.buffers()[1],
                                                                            pa.py_buffer(feats)]).cast(pa.binary())
        dims, audio = np.full(m, DIM, np.int32), pa.array([None] * m, pa.string())
    else:
        pick = rng.integers(0, len(pool), m)
        duration = np.array([pool[k]["duration"] for k in pick], np.float32)
        frames = np.array([pool[k]["frames"] for k in pick], np.int64)
        feats_col = pa.array([pool[k]["blob"] for k in pick], pa.binary())
        links = [pool[k]["links"] / f"u{i:09d}.wav" for i, k in zip(idx, pick)]
        for link, k in zip(links, pick):
            link.symlink_to(pool[k]["path"])
        dims, audio = np.full(m, STREAM_DIM, np.int32), pa.array([str(x) for x in links], pa.string())
    n_codes = np.maximum(1, (50 * duration).astype(np.int64))
    n_text = np.maximum(1, (n_codes // 8)).astype(np.int64)
    emotion = rng.integers(0, 7, m)
    return pa.table({
        "id": pa.array([f"u{i:09d}" for i in idx]),
        "speaker": pa.array([f"s{k:07d}" for k in speaker]),
        "language": pa.array(["ko"] * m),
        "emotion": pa.array([None] * m, pa.string()),
        "emotion_id": pa.array(emotion.astype(np.int16)),
        "text": pa.array(["x"] * m), "text_norm": pa.array(["x"] * m),
        "text_ids": _lists(n_text, rng.integers(2, 200, int(n_text.sum())).astype(np.int32), pa.int32()),
        "n_text": pa.array(n_text.astype(np.int32)),
        "codes": _lists(n_codes, rng.integers(0, 64, int(n_codes.sum())).astype(np.int32), pa.int32()),
        "n_codes": pa.array(n_codes.astype(np.int32)),
        "duration": pa.array(duration),
        "feats": feats_col,
        "n_frames": pa.array(frames.astype(np.int32)),
        "feat_dim": pa.array(dims),
        "prompt_feats": pa.array([None] * m, pa.binary()), "prompt_frames": pa.array(np.zeros(m, np.int32)),
        "emo_feats": pa.array([None] * m, pa.binary()), "emo_frames": pa.array(np.zeros(m, np.int32)),
        "audio_path": audio, "prompt_audio_path": pa.array([None] * m, pa.string()),
        "emotion_audio_path": pa.array([None] * m, pa.string()),
    }, schema=UTTERANCE_SCHEMA)


def spec_for(data: Path, run_key: str, feature_actors: int = 1):
    from indextts_ray.data.bucketing import BucketingSettings
    from indextts_ray.data.config import PromptConfig
    from indextts_ray.data.ingest import make_spec

    return make_spec([str(data)], seed=0, bucketing=BucketingSettings(6000, 64, 2048), prompt=PromptConfig(),
                     fetch_cpus=0.25, run_key=run_key, feature_actors=feature_actors,
                     feature_actor_cpus=0.25 / feature_actors)  # 0.25 CPU per rank in all: the box has 2


STREAM_DIM, POOL = 8, 16  # streaming set: mel bands (feature dim) and distinct wavs the rows point at


def write_audio_corpus(root: Path, n: int, stored: bool, seed: int = 0) -> Path:
    """`n` utterances pointing at a pool of POOL wavs (1-15 s) with their real 50 Hz frame counts: features
    stored (the builtin extractor's) or not (`data.features.mode: streaming`, computed in the stream)."""
    import soundfile as sf

    from indextts_ray.data.audio import read_wav16k
    from indextts_ray.data.config import FeaturesConfig
    from indextts_ray.data.features.base import build_extractor
    from indextts_ray.data.features.builtin import fit_codebook
    from indextts_ray.data.schema import encode_feats

    rng = np.random.default_rng(seed)
    wav_dir = root / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, seconds in enumerate(np.linspace(1.0, 15.0, POOL)):
        t = np.arange(int(seconds * 24_000)) / 24_000
        y = sum(np.sin(2 * np.pi * h * (110 + 7 * k) * t) / h for h in range(1, 10)) * (0.5 + 0.5 * np.sin(6 * t))
        y = 0.1 * y + 0.003 * rng.standard_normal(t.size)
        paths.append(str(wav_dir / f"w{k:02d}.wav"))
        sf.write(paths[-1], y.astype(np.float32), 24_000, subtype="PCM_16")
    fcfg = FeaturesConfig(n_mels=STREAM_DIM, codebook_size=16, kmeans_sample_frames=4000)
    wavs = [read_wav16k(p, 16_000) for p in paths]
    fit_codebook(fcfg, iter(wavs), root / "features")
    ex = build_extractor(fcfg, root / "features")
    feats = [ex.features(w) for w in wavs]
    # every row gets its own path (a symlink into the pool): the actor computes each prompt's features, as it
    # would for distinct files, instead of reusing those of another row of the batch
    pool = [{"path": p, "duration": len(w) / 16_000, "frames": len(f), "blob": encode_feats(f) if stored else b"",
             "links": root / "links"} for p, w, f in zip(paths, wavs, feats)]
    (root / "links").mkdir(exist_ok=True)
    write_corpus(root, n, seed, pool)
    meta = {"schema_version": 2, "rows": n, "features": {
        "kind": "builtin", "mode": "stored" if stored else "streaming", "dim": STREAM_DIM, "codebook_size": 16,
        "frame_rate": 50, "extractor": fcfg.model_dump(mode="json"), "clip_seconds": 15.0, "sample_rate": 16_000}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def measure_plan(spec) -> dict:
    from indextts_ray.data.ingest import CorpusIndex, plan_split

    t0 = time.perf_counter()
    index = CorpusIndex(spec)
    t1 = time.perf_counter()
    plan = plan_split(index, spec, "train", 0)
    t2 = time.perf_counter()
    return {"index_s": t1 - t0, "plan_s": t2 - t1, "entries": len(plan.batches), "rows": int(index.n)}


def consume(config: dict) -> None:
    """Worker loop: stream `batches` micro-batches of this rank through Ray Data, as the training loop does."""
    import ray.train

    from indextts_ray.data.bucketing import RankSchedule
    from indextts_ray.data.ingest import get_planner, micro_batches
    from indextts_ray.train.collate import collate

    spec, n, step_s = config["spec"], config["batches"], config.get("step_ms", 0) / 1000
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    planner = get_planner(spec)
    n_entries = ray.get(planner.n_entries.remote("train", 0))
    schedule = RankSchedule(n_entries, world, rank, 1)
    steps = min(n, schedule.steps_left)
    ray.get(planner.set_cursor.remote("train", rank, 0, [j for i in range(steps) for j in schedule.micro_batches(i)]))
    stream = micro_batches(ray.train.get_dataset_shard("train"))
    t0, rows, wait, steady = time.perf_counter(), 0, 0.0, None
    for i in range(steps):
        if i == WARMUP:  # the data-wait share leaves out the pipeline's start (actors loading the extractor)
            steady, wait = time.perf_counter(), 0.0
        t = time.perf_counter()
        batch = collate(next(stream))
        wait += time.perf_counter() - t
        rows += len(batch["text_ids"])
        time.sleep(step_s)  # the training step (on a GPU: the host only waits)
    dt = time.perf_counter() - t0
    steady_s = time.perf_counter() - steady if steady is not None else dt
    out = {"rank": rank, "rss_start": rss0, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "batches": steps, "rows": rows, "seconds": dt, "batches_per_s": steps / dt, "wait_s": wait,
           "steady_s": steady_s, "first_s": dt - steady_s}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(out))
    ray.train.report({"done": 1})


def measure_stream(spec, batches: int, work: Path, step_ms: float = 0.0) -> list[dict]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from indextts_ray.data.ingest import IngestDataConfig, planner_actor, rank_dataset, release_planner

    out = work / "stream"
    out.mkdir(parents=True, exist_ok=True)
    planner_actor(spec)
    try:
        TorchTrainer(consume, train_loop_config={"spec": spec, "batches": batches, "out": str(out), "step_ms": step_ms},
                     scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(name="ingest", storage_path=str(work / "runs")),
                     datasets={"train": rank_dataset(spec, "train", 0)},
                     dataset_config=IngestDataConfig(spec)).fit()
    finally:
        release_planner(spec)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def bytes_per_utt(root: Path, n: int) -> float:
    return sum(f.stat().st_size for f in root.rglob("shard-*.arrow")) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[270_000, 2_700_000], help="none: streaming only")
    ap.add_argument("--batches", type=int, default=500, help="micro-batches each of the 2 workers consumes")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--stream-size", type=int, default=20_000, help="utterances of the streaming comparison (0: skip)")
    ap.add_argument("--stream-batches", type=int, default=100, help="micro-batches per worker in that comparison")
    ap.add_argument("--feature-actors", type=int, default=1, help="extractor actors per rank (0.25 CPU in all)")
    ap.add_argument("--step-ms", type=float, default=150.0, help="simulated training step after each micro-batch")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest_scale_"))
    import ray

    results, stream = {}, {}
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
        ray.data.DataContext.get_current().enable_progress_bars = False
        for n in args.sizes:
            t0 = time.perf_counter()
            data = write_corpus(work / f"n{n}", n)
            print(f"{n:,} utterances written in {time.perf_counter() - t0:.0f} s "
                  f"({bytes_per_utt(data, n):,.0f} bytes per utterance on disk, tiny dims)", flush=True)
            spec = spec_for(data, f"bench{n}")
            plan = measure_plan(spec)
            print(f"  plan: corpus index {plan['index_s']:.1f} s + epoch plan {plan['plan_s']:.1f} s -> "
                  f"{plan['entries']:,} micro-batches", flush=True)
            ranks = measure_stream(spec, args.batches, work / f"n{n}")
            for r in ranks:
                print(f"  rank {r['rank']}: {r['batches']} batches ({r['rows']:,} rows) at {r['batches_per_s']:.1f} "
                      f"batches/s; peak RSS {r['rss_start'] / GIB:.2f} GiB at start -> {r['rss_peak'] / GIB:.2f} GiB",
                      flush=True)
            results[n] = {**plan, "rss_peak": max(r["rss_peak"] for r in ranks),
                          "batches_per_s": sum(r["batches_per_s"] for r in ranks),
                          "bytes_per_utt": bytes_per_utt(data, n)}
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)
        for mode in ("stored", "streaming") if args.stream_size else ():
            data = write_audio_corpus(work / f"audio-{mode}", args.stream_size, stored=mode == "stored")
            ranks = measure_stream(spec_for(data, f"bench-{mode}", args.feature_actors), args.stream_batches,
                                   work / f"audio-{mode}", args.step_ms)
            wait = sum(r["wait_s"] for r in ranks) / sum(r["steady_s"] for r in ranks)
            steady = sum((r["batches"] - WARMUP) / r["steady_s"] for r in ranks)
            stream[mode] = {"wait": wait, "bytes_per_utt": bytes_per_utt(data, args.stream_size),
                            "batches_per_s": steady}
            print(f"  {mode} features, {args.stream_size:,} utterances, step {args.step_ms:.0f} ms: first batch after "
                  f"{max(r['first_s'] for r in ranks):.1f} s, then data wait {100 * wait:.1f} % of the loop, "
                  f"{steady:.1f} batches/s (2 ranks), {stream[mode]['bytes_per_utt']:,.0f} bytes per utterance "
                  "on disk", flush=True)
    finally:
        ray.shutdown()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    d = 6.0  # on paper: utterances (and prompts) of 6 s
    if results:
        report_scale(results, d)
    if stream:
        # on paper, streaming mode stores codes + text + paths per utterance, no features
        print(f"bytes_per_utt_real_streaming={4 * 50 * d + 200 + 100:.0f}")
        print(f"bytes_per_utt_stored={stream['stored']['bytes_per_utt']:.0f}")
        print(f"bytes_per_utt_streaming={stream['streaming']['bytes_per_utt']:.0f}")
        print(f"data_wait_pct_stored={100 * stream['stored']['wait']:.1f}")
        print(f"data_wait_pct_streaming={100 * stream['streaming']['wait']:.1f}")
        print(f"batches_per_s_stored={stream['stored']['batches_per_s']:.1f}")
        print(f"batches_per_s_streaming={stream['streaming']['batches_per_s']:.1f}")
    return 0


def report_scale(results: dict, d: float) -> None:
    small, large = min(results), max(results)
    growth = results[large]["rss_peak"] / results[small]["rss_peak"] - 1
    plan_large = results[large]["index_s"] + results[large]["plan_s"]
    # on paper, per utterance of d seconds with a prompt of p seconds (<= 15 s), 1024-dim float16 at 50 Hz:
    # schema 1 stored the prompt's features in every target row, schema 2 stores each utterance's own once
    p = d
    real_before = 2 * 1024 * 50 * p + 4 * 50 * d + 200
    real_after = 2 * 1024 * 50 * d + 4 * 50 * d + 200
    print(f"targets: plan at {large:,} {plan_large:.1f} s (<= 60 s: {'PASS' if plan_large <= 60 else 'MISS'}); "
          f"per-worker peak RSS {results[large]['rss_peak'] / GIB:.2f} GiB (<= 2 GiB: "
          f"{'PASS' if results[large]['rss_peak'] <= 2 * GIB else 'MISS'}); growth {small:,} -> {large:,} "
          f"{growth:+.1%} (<= 10 %: {'PASS' if growth <= 0.10 else 'MISS'})")
    print(f"plan_seconds={plan_large:.1f}")
    print(f"per_worker_peak_rss_gib={results[large]['rss_peak'] / GIB:.2f}")
    print(f"rss_growth_pct={100 * growth:.1f}")
    print(f"batches_per_s={results[large]['batches_per_s']:.1f}")
    print(f"bytes_per_utt_tiny={results[large]['bytes_per_utt']:.0f}")
    print(f"bytes_per_utt_real_before={real_before:.0f}")
    print(f"bytes_per_utt_real_after={real_after:.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
