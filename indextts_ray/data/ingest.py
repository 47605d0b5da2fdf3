"""Training, validation and eval batches: a deterministic epoch plan streamed through Ray Data.

    driver                    IngestPlanner actor (one per run)          Ray Data, per rank               worker
    ------                    ---------------------------------          ------------------               ------
    IngestSpec  ---------->   corpus index (lengths, speaker, emotion,   [entries] generator task         get_dataset_shard
    (paths, row counts,       frames per row: ints, no features)           asks the planner for this       ("train")
     seed, policies)          epoch plan = token-budget batches          rank's cursor, in chunks        .iter_batches()
                              + a prompt drawn per target and epoch  --> [fetch] tasks: target rows +    -> one packed
                              + a random crop per prompt                   prompt rows from the store,     micro-batch per
                              cursor per (split, rank): plan indices       prompt cropped, fp16 bytes      block -> collate
                              (training: lazily, epoch after epoch)      [features] actors, streaming mode only:
                                                                           the crops computed from the audio

The plan is a pure function of (corpus, seed, epoch, settings), computed once per epoch in the planner, so no
worker holds a corpus-sized table; a worker tells the planner which plan entries it consumes next (its
cursor: resume position, world size, accumulation) and then iterates its dataset. A training cursor runs to
the end of the run, so one stream crosses epoch boundaries without stopping (a new stream is opened only after
a rollback that replays data). `IngestDataConfig` gives
every rank its own ordered dataset (Ray's streaming split assigns blocks to whichever rank asks first, which
would break exact resume and elastic re-splitting); ranks take plan entries k*world_size + r as before.

In `data.features.mode: streaming` (`data/stream_features.py`) the fetch tasks build the same rows from the
same plan with empty feature blobs and a request per clip; an actor pool running the extractor fills them.

Global row numbers: train files of every dataset (in order), then val files; prompts of train targets are
drawn among train rows, those of val targets among train and val rows of the speaker.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.train import DataConfig

from indextts_ray import storage
from indextts_ray.data.bucketing import BucketingSettings, plan_epoch, rank_steps
from indextts_ray.data.config import PromptConfig
from indextts_ray.data.features.base import FRAME_RATE
from indextts_ray.data.idle_backoff import IdleBackoff
from indextts_ray.data.pairing import column_codes
from indextts_ray.data.prompts import REASONS, crop_starts, draw_prompts, row_hash
from indextts_ray.data.schema import AUDIO_COLUMNS, BATCH_SCHEMA, pack_batches, unpack_batches
from indextts_ray.data.store import RowStore, list_shards, read_table, row_counts
from indextts_ray.data.stream_features import (
    StreamFeatures,
    StreamSettings,
    stream_settings,
    with_requests,
)
from indextts_ray.errors import DataError

NAMESPACE = "indextts_ray"
VAL_EPOCH = 0  # validation draws its prompts once: every evaluation sees the same pairs
INDEX_COLUMNS = ["speaker", "emotion_id", "n_text", "n_codes", "n_frames"]
TARGET_COLUMNS = ["id", "speaker", "language", "emotion", "emotion_id", "text", "text_norm", "text_ids", "n_text",
                  "codes", "n_codes", "duration", "prompt_feats", "prompt_frames", "emo_feats", "emo_frames"]
PROMPT_COLUMNS = ["id", "emotion_id", "feats", "n_frames", "feat_dim"]
ENTRIES_PER_BLOCK = 8  # plan entries per block of the entry stream (each becomes one fetch call)
EMOTION_REFERENCES = ("prompt", "target", "target_crop")  # train.emotion_reference (see `emotion_reference`)


@dataclass(frozen=True)
class IngestSpec:
    """Everything the planner and the fetch tasks need (picklable, absolute paths, no row-sized data)."""

    data_dirs: tuple[str, ...]
    files: tuple[str, ...]  # train files of every dataset, then val files
    counts: tuple[int, ...]  # rows per file
    n_train_files: tuple[int, ...]  # train files per dataset (mixture bounds)
    seed: int
    bucketing: BucketingSettings
    prompt: PromptConfig
    max_prompt_frames: int
    keep_speakers: tuple[str, ...] | None = None
    mixture: dict | None = None  # MixtureConfig as JSON
    fetch_cpus: float = 0.25
    name: str = field(default="")  # planner actor name
    emotion_reference: str = "prompt"  # EMOTION_REFERENCES: which clip fills emo_feats
    stream: StreamSettings | None = None  # streaming features (the data's features.mode); None = stored

    @property
    def n_train_rows(self) -> int:
        return int(sum(self.counts[: sum(self.n_train_files)]))


def make_spec(data_dirs: list[str], *, seed: int, bucketing: BucketingSettings, prompt: PromptConfig,
              keep_speakers: list[str] | None = None, mixture: dict | None = None, fetch_cpus: float = 0.25,
              run_key: str = "", emotion_reference: str = "prompt", feature_actors: int = 1,
              feature_actor_cpus: float = 0.5, feature_actor_gpus: float = 0.0) -> IngestSpec:
    """Resolve the shard files (footers only) of `data_dirs` into a spec; `feature_actor*` size the extractor
    actor pool when the data are prepared with `data.features.mode: streaming`."""
    if emotion_reference not in EMOTION_REFERENCES:
        raise ValueError(f"emotion_reference must be one of {', '.join(EMOTION_REFERENCES)}; got {emotion_reference!r}")
    train = [list_shards(storage.join(d, "train")) for d in data_dirs]
    val = [f for d in data_dirs for f in list_shards(storage.join(d, "val"))]
    files = [f for fs in train for f in fs] + val
    counts = row_counts(files)
    name = "ingest-" + hashlib.sha256(f"{run_key}|{'|'.join(map(str, files))}".encode()).hexdigest()[:16]
    return IngestSpec(tuple(str(d) for d in data_dirs), tuple(str(f) for f in files), tuple(int(c) for c in counts),
                      tuple(len(fs) for fs in train), seed, bucketing, prompt,
                      max(1, int(round(prompt.max_seconds * FRAME_RATE))),
                      tuple(sorted(keep_speakers)) if keep_speakers is not None else None, mixture, fetch_cpus, name,
                      emotion_reference,
                      stream_settings([str(d) for d in data_dirs], feature_actors, feature_actor_cpus,
                                      feature_actor_gpus))


# ----------------------------------------------------------------------------- the plan (pure functions)


class CorpusIndex:
    """Per-row integers of the whole corpus: GPT length, speaker and emotion codes, feature frames, split."""

    def __init__(self, spec: IngestSpec):
        tables = [read_table(f, INDEX_COLUMNS) for f in spec.files]
        table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in INDEX_COLUMNS})
        n_train = spec.n_train_rows
        self.n = table.num_rows
        self.speaker, names = column_codes(table.column("speaker"))
        self.emotion = table.column("emotion_id").to_numpy().astype(np.int64)
        # GPT positions per row (start/stop tokens on text and codes); the prompt runs through the conditioners
        self.lengths = (table.column("n_text").to_numpy().astype(np.int64)
                        + table.column("n_codes").to_numpy().astype(np.int64) + 4)
        self.frames = table.column("n_frames").to_numpy().astype(np.int64)
        self.is_train = np.arange(self.n) < n_train
        if spec.keep_speakers is not None:
            self.kept = np.isin(names.to_numpy(zero_copy_only=False), list(spec.keep_speakers))[self.speaker]
        else:
            self.kept = np.ones(self.n, dtype=bool)
        counts = np.asarray(spec.counts, dtype=np.int64)
        ends = np.cumsum(counts)
        train_ends = ends[np.cumsum(spec.n_train_files) - 1] if spec.n_train_files else np.zeros(0, np.int64)
        self.dataset_bounds = np.concatenate([[0], train_ends]).astype(np.int64)  # train rows of each dataset

    def targets(self, split: str) -> np.ndarray:
        return np.flatnonzero((self.is_train if split == "train" else ~self.is_train) & self.kept)

    def pool(self, split: str) -> np.ndarray:
        """Rows that may prompt the split's targets: train rows for train, every row for val."""
        return self.is_train if split == "train" else np.ones(self.n, dtype=bool)


@dataclass
class EpochPlan:
    """One epoch of one split: plan entries (micro-batches of target rows), each target's prompt and crop."""

    batches: list[np.ndarray]  # global target rows per entry
    dataset: np.ndarray  # (n_entries,) dataset of each entry (mixtures; else 0)
    targets: np.ndarray  # rows with a prompt this epoch (sorted)
    prompt: np.ndarray  # prompt row of each of `targets`
    crop: np.ndarray  # crop start frame of each of `targets`
    left_out: dict  # reason -> rows left out (no prompt under the policy)
    other_emotion: int

    def entry(self, j: int) -> dict:
        rows = self.batches[j]
        pos = np.searchsorted(self.targets, rows)
        return {"entry": j, "dataset": int(self.dataset[j]), "rows": rows.tolist(),
                "prompts": self.prompt[pos].tolist(), "crops": self.crop[pos].tolist()}


def plan_split(index: CorpusIndex, spec: IngestSpec, split: str, epoch: int) -> EpochPlan:
    """The epoch's plan for `split`; a pure function of (corpus, spec, split, epoch)."""
    targets = index.targets(split)
    draw = draw_prompts(index.speaker, index.emotion, index.pool(split), targets, spec.prompt, spec.seed, epoch)
    ok = draw.prompt >= 0
    left_out = {REASONS[r]: int((draw.reason == r).sum()) for r in range(1, len(REASONS)) if (draw.reason == r).any()}
    targets, prompt = targets[ok], draw.prompt[ok]
    crop = crop_starts(index.frames[prompt], spec.max_prompt_frames, spec.seed, epoch, targets)
    lengths = index.lengths[targets]
    if split == "train" and spec.mixture is not None:
        from indextts_ray.data.mixing import Mixture, MixtureConfig

        bounds = np.searchsorted(targets, index.dataset_bounds)  # datasets' target ranges (targets are sorted)
        mixed = Mixture(MixtureConfig.model_validate(spec.mixture), lengths, bounds).plan(spec.bucketing, spec.seed,
                                                                                          epoch)
        batches, dataset = [targets[b] for b in mixed.batches], mixed.dataset
    else:
        local = plan_epoch(lengths, spec.bucketing, spec.seed, epoch)
        batches, dataset = [targets[b] for b in local], np.zeros(len(local), dtype=np.int64)
    return EpochPlan(batches, np.asarray(dataset, dtype=np.int64), targets, prompt, crop, left_out,
                     draw.other_emotion)


def val_entries(n_entries: int, world_size: int, rank: int) -> list[int]:
    """Validation entries of `rank`: round robin; ranks differ by at most one entry (see `balance_val`)."""
    return list(range(rank, n_entries, world_size))


def balance_val(plan: EpochPlan, world_size: int) -> EpochPlan:
    """Split the largest validation batches in two until every rank gets the same number of entries (FSDP
    runs all ranks in lockstep); every row is still evaluated exactly once."""
    batches = list(plan.batches)
    while len(batches) % world_size and any(len(b) > 1 for b in batches):
        i = max(range(len(batches)), key=lambda k: len(batches[k]))
        b = batches.pop(i)
        batches[i:i] = [b[: len(b) // 2], b[len(b) // 2:]]
    return EpochPlan(batches, np.zeros(len(batches), dtype=np.int64), plan.targets, plan.prompt, plan.crop,
                     plan.left_out, plan.other_emotion)


# ----------------------------------------------------------------------------- the planner actor


class IngestPlanner:
    """Holds the corpus index once, computes each epoch's plan once, serves ranks their cursors' entries."""

    def __init__(self, spec: IngestSpec):
        self.spec = spec
        self.index = CorpusIndex(spec)
        self._plans: dict[tuple, EpochPlan] = {}
        self._cursors: dict[tuple[str, int], _Cursor] = {}

    def _plan(self, split: str, epoch: int, world_size: int = 1) -> EpochPlan:
        key = (split, epoch if split == "train" else VAL_EPOCH, 1 if split == "train" else world_size)
        if key not in self._plans:
            if len([k for k in self._plans if k[0] == split]) >= 2:  # keep memory flat: current + next epoch
                self._plans.pop(min(k for k in self._plans if k[0] == split))
            plan = plan_split(self.index, self.spec, split, key[1])
            self._plans[key] = plan if split == "train" else balance_val(plan, world_size)
        return self._plans[key]

    def describe(self, split: str, epoch: int, world_size: int = 1) -> dict:
        """Entry count, target rows, rows left out by the prompt policy, padding of the plan."""
        plan = self._plan(split, epoch, world_size)
        sizes = np.array([len(b) for b in plan.batches], dtype=np.int64)
        real = sum(int(self.index.lengths[b].sum()) for b in plan.batches)
        padded = sum(len(b) * int(self.index.lengths[b].max()) for b in plan.batches)
        return {"entries": len(plan.batches), "rows": int(sizes.sum()), "left_out": plan.left_out,
                "other_emotion_prompts": plan.other_emotion, "padding": 1 - real / padded if padded else 0.0,
                "datasets": np.bincount(plan.dataset, weights=sizes, minlength=1).astype(int).tolist()}

    def n_entries(self, split: str, epoch: int, world_size: int = 1) -> int:
        return len(self._plan(split, epoch, world_size).batches)

    def rows_per_dataset(self, split: str, epoch: int, stop: int) -> list[int]:
        """Target rows of each dataset in plan entries [0, stop) (mixture logs after a resume)."""
        plan = self._plan(split, epoch)
        sizes = np.array([len(b) for b in plan.batches[:stop]], dtype=np.int64)
        return np.bincount(plan.dataset[:stop], weights=sizes, minlength=max(1, len(self.spec.n_train_files)))\
            .astype(np.int64).tolist()

    def set_cursor(self, split: str, rank: int, epoch: int, entries: list[int], world_size: int = 1) -> int:
        """The plan entries rank `rank` reads next (in order) when it iterates its dataset."""
        self._plan(split, epoch, world_size)
        self._cursors[(split, rank)] = _Cursor(split, world_size, iter([(epoch, np.asarray(entries, np.int64))]))
        return len(entries)

    def run_cursor(self, rank: int, epoch: int, position: int, world_size: int, grad_accum: int,
                   last_epoch: int, max_steps: int | None = None) -> None:
        """Rank `rank`'s training entries from (epoch, position) to the end of the run (`last_epoch`, at most
        `max_steps` steps), across epochs, so one stream serves the whole run and the next epoch's batches are
        already in flight when an epoch ends. Expanded as the stream reads (an epoch's plan is computed when its
        first entry is asked for)."""
        steps = rank_steps(lambda e: self.n_entries("train", e), world_size, rank, grad_accum, epoch, position,
                           last_epoch, max_steps)
        by_epoch = ((e, np.asarray([j for _, _, _, js in group for j in js], np.int64))
                    for e, group in itertools.groupby(steps, key=lambda step: step[0]))
        self._cursors[("train", rank)] = _Cursor("train", 1, by_epoch)

    def val_cursor(self, rank: int, world_size: int, max_entries: int | None = None) -> int:
        n = len(self._plan("val", VAL_EPOCH, world_size).batches)
        mine = val_entries(n, world_size, rank)
        return self.set_cursor("val", rank, VAL_EPOCH, mine[:max_entries] if max_entries else mine, world_size)

    def entries(self, split: str, rank: int, start: int, count: int) -> list[dict]:
        cursor = self._cursors[(split, rank)]
        return [{**self._plan(split, epoch, cursor.world_size).entry(int(j)), "epoch": epoch}
                for epoch, j in cursor.take(start, count)]


class _Cursor:
    """A rank's plan entries in stream order: (epoch, entries) chunks pulled from `chunks` as reads reach them
    and kept as int arrays (a retried generator task may read again from the start)."""

    def __init__(self, split: str, world_size: int, chunks: Iterator[tuple[int, np.ndarray]]):
        self.split, self.world_size = split, world_size
        self._chunks = chunks
        self._held: list[tuple[int, np.ndarray]] = []
        self._size = 0

    def take(self, start: int, count: int) -> list[tuple[int, int]]:
        while self._size < start + count and (chunk := next(self._chunks, None)) is not None:
            self._held.append(chunk)
            self._size += len(chunk[1])
        out, offset = [], 0
        for epoch, entries in self._held:
            lo, hi = max(start - offset, 0), min(start + count - offset, len(entries))
            out.extend((epoch, int(j)) for j in entries[lo:hi])
            offset += len(entries)
            if offset >= start + count:
                break
        return out


_PLANNERS: dict[str, object] = {}  # the driver's handles: a named actor dies with its last handle


def planner_actor(spec: IngestSpec):
    """The run's planner (created once by the driver; workers and tasks find it by name). It lives until
    `release_planner` or the end of the driver, across worker-group restarts and resizes."""
    if spec.name not in _PLANNERS:
        actor = ray.remote(num_cpus=0)(IngestPlanner)
        _PLANNERS[spec.name] = actor.options(name=spec.name, namespace=NAMESPACE, get_if_exists=True).remote(spec)
    return _PLANNERS[spec.name]


def release_planner(spec: IngestSpec) -> None:
    handle = _PLANNERS.pop(spec.name, None)
    if handle is not None:
        ray.kill(handle)


def get_planner(spec: IngestSpec):
    return ray.get_actor(spec.name, namespace=NAMESPACE)


# ----------------------------------------------------------------------------- the Ray Data stream


def _entry_stream(batch: pa.Table, spec: IngestSpec) -> Iterator[pa.Table]:
    """Generator stage: this rank's cursor entries, pulled from the planner in chunks."""
    planner = get_planner(spec)
    split, rank = batch.column("split")[0].as_py(), int(batch.column("rank")[0].as_py())
    start = 0
    while True:
        got = ray.get(planner.entries.remote(split, rank, start, ENTRIES_PER_BLOCK))
        if not got:
            return
        start += len(got)
        yield pa.Table.from_pylist(got, schema=_ENTRY_SCHEMA)


_ENTRY_SCHEMA = pa.schema([("entry", pa.int64()), ("dataset", pa.int32()), ("rows", pa.list_(pa.int64())),
                           ("prompts", pa.list_(pa.int64())), ("crops", pa.list_(pa.int64())), ("epoch", pa.int64())])
_STORES: dict[str, RowStore] = {}  # per process: fetch tasks reuse open files


def _store(spec: IngestSpec) -> RowStore:
    if spec.name not in _STORES:
        _STORES.clear()
        _STORES[spec.name] = RowStore(list(spec.files), np.asarray(spec.counts))
    return _STORES[spec.name]


def fetch_entries(entries: pa.Table, store: RowStore, max_prompt_frames: int, emotion_reference: str = "prompt",
                  seed: int = 0, clip_seconds: float | None = None) -> pa.Table:
    """Plan entries -> batch rows (`BATCH_SCHEMA`): each target with its prompt's cropped features (and, with a
    target `emotion_reference`, the target's own features as its emotion reference).

    `clip_seconds` set = streaming mode: the stored blobs are empty, so the same code gives the same rows with
    empty crops; each row also gets the requests (`stream_features.with_requests`) that `StreamFeatures` fills."""
    out = []
    own = emotion_reference != "prompt"
    stream = clip_seconds is not None
    for e in entries.to_pylist():
        rows = np.asarray(e["rows"], dtype=np.int64)
        targets = store.take(rows, TARGET_COLUMNS + (["feats", "n_frames"] if own else ["n_frames"] if stream else [])
                             + (AUDIO_COLUMNS if stream else []))
        prompts = store.take(np.asarray(e["prompts"], dtype=np.int64),
                             PROMPT_COLUMNS + (["audio_path"] if stream else []))
        table = join_prompts(targets, prompts, e["crops"], max_prompt_frames, e["entry"], e["dataset"])
        keys = row_hash(seed, e["epoch"], rows, 2)
        if own:
            table = emotion_reference_from_target(table, targets, emotion_reference, max_prompt_frames, keys)
        if stream:
            table = stream_requests(table, targets, prompts, e["crops"], emotion_reference, max_prompt_frames, keys,
                                    clip_seconds)
        out.append(table)
    return pa.concat_tables(out) if out else BATCH_SCHEMA.empty_table()


def stream_requests(batch: pa.Table, targets: pa.Table, prompts: pa.Table, crops: list[int], emotion_reference: str,
                    max_frames: int, keys: np.ndarray, clip_seconds: float) -> pa.Table:
    """The feature requests of streaming mode: the same clips and windows `join_prompts` and
    `emotion_reference_from_target` crop (a row's own prompt/emotion file: its first `clip_seconds`, whole)."""
    n = batch.num_rows
    zeros = np.zeros(n, np.int64)
    own_prompt = np.asarray([p is not None for p in targets.column("prompt_audio_path").to_pylist()], bool)
    path = np.where(own_prompt, targets.column("prompt_audio_path").to_numpy(zero_copy_only=False),
                    prompts.column("audio_path").to_numpy(zero_copy_only=False)).tolist()
    batch = with_requests(batch, "prompt", path, np.where(own_prompt, clip_seconds, 0.0),
                          np.where(own_prompt, 0, np.asarray(crops, np.int64)),
                          np.where(own_prompt, targets.column("prompt_frames").to_numpy(),
                                   prompts.column("n_frames").to_numpy()))
    file = targets.column("emotion_audio_path").to_numpy(zero_copy_only=False)
    has_file = np.asarray([f is not None for f in file], bool)
    if emotion_reference == "prompt":  # only rows with their own file have an emotion reference
        path, start = [f if h else None for f, h in zip(file, has_file)], zeros
    else:
        start, _ = emotion_window(targets.column("n_frames").to_numpy(), emotion_reference, max_frames, keys)
        path = np.where(has_file, file, targets.column("audio_path").to_numpy(zero_copy_only=False)).tolist()
        start = np.where(has_file, 0, start)
    total = np.where(has_file, targets.column("emo_frames").to_numpy(), targets.column("n_frames").to_numpy())
    return with_requests(batch, "emo", path, np.where(has_file, clip_seconds, 0.0), start, total)


def emotion_reference_from_target(batch: pa.Table, targets: pa.Table, mode: str, max_frames: int,
                                  keys: np.ndarray) -> pa.Table:
    """Batch rows with the target's own features as `emo_feats` (labelled with its emotion), except rows with
    their own `emotion_audio_path` features. `target`: the first `max_frames` frames; `target_crop`: a window
    of half the target (at most `max_frames`) at `keys % (spare + 1)`, so the emotion path hears the target's
    delivery but never the whole utterance it is asked to predict."""
    start, size = emotion_window(targets.column("n_frames").to_numpy(), mode, max_frames, keys)
    dims = batch.column("feat_dim").to_numpy()  # a target's features have its prompt's dim (one extractor)
    has_file = np.asarray([b is not None for b in batch.column("emo_feats").to_pylist()], dtype=bool)
    feats = [f if keep else blob[2 * int(d) * int(a): 2 * int(d) * int(a + k)]  # float16: 2 bytes per value
             for f, keep, blob, d, a, k in zip(batch.column("emo_feats").to_pylist(), has_file,
                                               targets.column("feats").to_pylist(), dims, start, size)]
    frames = np.where(has_file, batch.column("emo_frames").to_numpy(), size).astype(np.int32)
    label = np.where(has_file, -1, targets.column("emotion_id").to_numpy()).astype(np.int16)
    for name, col in (("emo_feats", pa.array(feats, pa.binary())), ("emo_frames", pa.array(frames)),
                      ("emo_emotion_id", pa.array(label))):
        batch = batch.set_column(batch.schema.get_field_index(name), name, col)
    return batch


def emotion_window(n_frames: np.ndarray, mode: str, max_frames: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of each target's emotion-reference window (see `emotion_reference_from_target`)."""
    n = np.asarray(n_frames, np.int64)
    size = np.minimum(n, max_frames) if mode == "target" else np.minimum(np.maximum(n // 2, 1), max_frames)
    start = (np.asarray(keys, np.uint64) % (n - size + 1).astype(np.uint64)).astype(np.int64) \
        if mode == "target_crop" else np.zeros(len(n), np.int64)
    return start, size


def join_prompts(targets: pa.Table, prompts: pa.Table, crops: list[int], max_frames: int, entry: int,
                 dataset: int) -> pa.Table:
    """Targets + their prompts' crops; a target with its own `prompt_audio_path` features keeps those."""
    dims = prompts.column("feat_dim").to_pylist()
    own = targets.column("prompt_feats").to_pylist()
    own_frames = targets.column("prompt_frames").to_pylist()
    feats, frames, pids = [], [], []
    for k, (blob, n, d, start, pid) in enumerate(zip(prompts.column("feats").to_pylist(),
                                                    prompts.column("n_frames").to_pylist(), dims, crops,
                                                    prompts.column("id").to_pylist())):
        if own[k] is not None:
            feats.append(own[k])
            frames.append(own_frames[k])
            pids.append("@" + targets.column("id")[k].as_py())
            continue
        take = min(n - start, max_frames)
        feats.append(blob[2 * d * start: 2 * d * (start + take)])  # float16 row-major: 2 bytes per value
        frames.append(take)
        pids.append(pid)
    prompt_emotion = np.where([o is None for o in own], prompts.column("emotion_id").to_numpy(), -1)
    n = targets.num_rows
    cols = {
        "entry": pa.array(np.full(n, entry, dtype=np.int64)),
        "dataset": pa.array(np.full(n, dataset, dtype=np.int32)),
        **{c: targets.column(c) for c in TARGET_COLUMNS if c not in ("prompt_feats", "prompt_frames", "emo_feats",
                                                                     "emo_frames")},
        "prompt_id": pa.array(pids, pa.string()),
        "prompt_emotion_id": pa.array(prompt_emotion.astype(np.int16)),
        "prompt_feats": pa.array(feats, pa.binary()),
        "prompt_frames": pa.array(frames, pa.int32()),
        "feat_dim": pa.array(dims, pa.int32()),
        "emo_feats": targets.column("emo_feats"),
        "emo_frames": targets.column("emo_frames"),
        "emo_emotion_id": pa.array(np.full(n, -1, dtype=np.int16)),  # emotion_audio_path files: unknown emotion
    }
    return pa.table(cols, schema=BATCH_SCHEMA)


def _fetch_stage(entries: pa.Table, spec: IngestSpec) -> pa.Table:
    """Plan entries -> packed micro-batches (one row per entry, `schema.PACKED_SCHEMA`)."""
    clip = spec.stream.clip_seconds if spec.stream else None
    return pack_batches([fetch_entries(entries.slice(i, 1), _store(spec), spec.max_prompt_frames,
                                       spec.emotion_reference, spec.seed, clip) for i in range(entries.num_rows)])


def rank_dataset(spec: IngestSpec, split: str, rank: int):
    """The ordered Ray Data stream of one rank: cursor entries -> fetched micro-batches (packed: one row each)."""
    seed_ds = ray.data.from_items([{"split": split, "rank": rank}], override_num_blocks=1)
    entries = seed_ds.map_batches(_entry_stream, fn_kwargs={"spec": spec}, batch_size=1, batch_format="pyarrow",
                                  num_cpus=0.01)
    ds = entries.map_batches(_fetch_stage, fn_kwargs={"spec": spec}, batch_size=1, batch_format="pyarrow",
                             zero_copy_batch=True, num_cpus=spec.fetch_cpus)
    if spec.stream is not None:  # the extractor as an actor stage: loaded once per actor, rows stay in order
        s = spec.stream
        ds = ds.map_batches(StreamFeatures, fn_constructor_kwargs={"settings": s}, batch_size=1,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=s.actors),
                            num_cpus=s.cpus, num_gpus=s.gpus or None)
    ds.context.execution_options.preserve_order = True  # fetch tasks run in parallel; entries stay in cursor order
    # Ray Data merges a task's outputs into blocks of up to target_max_block_size (128 MiB): the entry generator's
    # small chunks became one block holding the whole cursor, emitted when the generator ended, so one fetch task
    # (and in streaming mode one extractor call) took every entry before the first batch left. One row per block
    # keeps the stream a stream (entries spread over fetch tasks / actors, batches leave as they are ready), and
    # a row is a whole packed micro-batch, so the per-block cost is paid once per micro-batch (1-row blocks of
    # batch rows halved the throughput).
    ds.context.target_max_block_size = 1
    # its detectors check every scheduling step and warn about fetch tasks holding a few hundred MiB (the
    # micro-batches they produce), which is what this stream is for
    ds.context.issue_detectors_config.detectors = []
    ds.context.custom_execution_callback_classes = [IdleBackoff]  # no busy loop while training catches up
    return ds


class IngestDataConfig(DataConfig):
    """Each rank gets its own ordered stream (plan entries k*world_size + r of its cursor), not a share of
    a streaming split whose block-to-rank assignment depends on timing. Each stream is a one-way
    `streaming_split`, so its executor (a scheduling loop of a few ms of Python per step) runs in a coordinator
    actor: run by `ds.iterator()` it ran inside the training worker and took the GIL from the training loop."""

    def __init__(self, spec: IngestSpec):
        super().__init__(datasets_to_split="all")
        self.spec = spec

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        out = [{} for _ in range(world_size)]
        for name in datasets:
            for r in range(world_size):
                ds = rank_dataset(self.spec, name, r)
                ds.context.execution_options = self._resolve_execution_options(name)
                ds.context.execution_options.preserve_order = True
                out[r][name] = ds.streaming_split(1)[0]
        return out


def micro_batches(iterator, prefetch: int = 2) -> Iterator[pa.Table]:
    """The stream's micro-batches (one table per plan entry, in cursor order)."""
    for block in iterator.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch):
        yield from unpack_batches(block)


def prompted_rows(spec: IngestSpec, split: str, epoch: int, max_items: int | None = None, seed: int = 0) -> pa.Table:
    """The split's targets with the prompts the plan draws for them in `epoch` (batch rows, in row order), or a
    seeded uniform sample of `max_items` of them; no Ray (eval in the driver, tests)."""
    plan = plan_split(CorpusIndex(spec), spec, split, epoch)
    n = len(plan.targets)
    pick = np.arange(n) if max_items is None or n <= max_items else \
        np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False))
    store = RowStore(list(spec.files), np.asarray(spec.counts))
    entry = {"entry": 0, "dataset": 0, "rows": plan.targets[pick].tolist(), "prompts": plan.prompt[pick].tolist(),
             "crops": plan.crop[pick].tolist(), "epoch": epoch}
    rows = fetch_entries(pa.Table.from_pylist([entry], schema=_ENTRY_SCHEMA), store, spec.max_prompt_frames,
                         spec.emotion_reference, spec.seed, spec.stream.clip_seconds if spec.stream else None)
    return StreamFeatures(spec.stream).fill(rows) if spec.stream else rows


def heldout_rows(spec: IngestSpec, max_items: int, seed: int = 0) -> pa.Table:
    """Up to `max_items` validation targets with the prompts validation draws for them: eval and training
    validation see the same pairs."""
    return prompted_rows(spec, "val", VAL_EPOCH, max_items, seed)


def utterance_clips(table: pa.Table, max_frames: int) -> pa.Table:
    """Stored utterances as clips (`prompt_id`, `speaker`, `prompt_feats`, `prompt_frames`, `feat_dim`,
    `emotion_id`): their own features, the first `max_frames` frames (a prompt is at most that long)."""
    frames = np.minimum(table.column("n_frames").to_numpy(), max_frames).astype(np.int32)
    dims = table.column("feat_dim").to_numpy()
    if len(frames) and pc.min(pc.binary_length(table.column("feats"))).as_py() == 0:
        raise DataError("these prepared data store no features (data.features.mode streaming): probe clips of "
                        "whole splits need stored features; prepare with data.features.mode=stored for this eval")
    feats = [b[: 2 * int(d) * int(f)] for b, d, f in zip(table.column("feats").to_pylist(), dims, frames)]
    return pa.table({"prompt_id": table.column("id"), "speaker": table.column("speaker"),
                     "prompt_feats": pa.array(feats, pa.binary()), "prompt_frames": pa.array(frames),
                     "feat_dim": table.column("feat_dim"), "emotion_id": table.column("emotion_id")})


def check_same_data(saved: dict | None, spec: IngestSpec) -> None:
    """Resume refuses data whose content differs from what the checkpoint was trained on."""
    if saved is None:
        return
    now = data_fingerprint(spec)
    if saved.get("fingerprint") != now:
        raise DataError(f"the prepared data differ from the data this checkpoint was trained on (fingerprint "
                        f"{str(saved.get('fingerprint'))[:12]} != {now[:12]}; files or row counts changed): "
                        "train from the checkpoint's data, or start a new run (another run.name or --restart)")


def data_fingerprint(spec: IngestSpec) -> str:
    """Hash of what defines the rows: each dataset's `dataset.json` fingerprint, files and row counts."""
    parts = []
    for d in spec.data_dirs:
        meta = storage.join(d, "dataset.json")
        parts.append(storage.read_text(meta) if storage.is_file(meta) else d)
    blob = "\n".join(parts) + "|" + "|".join(f"{storage.name(f)}:{c}" for f, c in zip(spec.files, spec.counts))
    return hashlib.sha256(blob.encode()).hexdigest()
