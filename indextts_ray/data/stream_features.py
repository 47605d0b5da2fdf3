"""Streaming features (`data.features.mode: streaming`): prompt and emotion-reference features computed from the
audio inside the training stream, by Ray Data actors that load the extractor once.

    fetch task (data/ingest.py; packed micro-batches)    extractor actor (`StreamFeatures`)             worker
    batch rows exactly as in stored mode, but every  ->  per request: decode the file as `prepare`  ->  collate
    feature blob empty; per clip a request:              did, extractor.features of the whole clip,
      _<clip>_path   file (null = nothing to compute)    check its frames == _<clip>_total, crop
      _<clip>_clip   seconds read from its start (0 =    [start, start + frames) -> float16 bytes
                     whole file: an utterance)
      _<clip>_start  first frame of the crop             (<clip> = prompt, emo; frames = the batch's
      _<clip>_total  frames `prepare` counted             prompt_frames / emo_frames)

Why the whole clip and then the crop (not the cropped audio): the crop windows come from the same plan as in
stored mode, which crops stored whole-utterance features; an extractor with context (w2v-BERT's attention, the
log-mel's edge padding) gives other values for a cut piece of audio. Computing the whole clip gives the same
frames, so a streamed batch equals the stored one (`tests/data/test_streaming.py`). The price is a forward
over the whole prompt utterance, not only over its ≤ `data.prompt.max_seconds` crop (README, "Streaming
features").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from indextts_ray.data.audio import read_wav16k
from indextts_ray.data.config import FeaturesConfig
from indextts_ray.data.features.base import build_extractor
from indextts_ray.data.schema import FEATS_DTYPE, pack_batches, unpack_batches
from indextts_ray.errors import DataError

CLIPS = {"prompt": ("prompt_feats", "prompt_frames"), "emo": ("emo_feats", "emo_frames")}  # clip -> batch columns
REQUEST_FIELDS = [(f"_{clip}_{name}", t) for clip in CLIPS
                  for name, t in (("path", pa.string()), ("clip", pa.float64()), ("start", pa.int32()),
                                  ("total", pa.int32()))]
REQUEST_COLUMNS = [name for name, _ in REQUEST_FIELDS]


@dataclass(frozen=True)
class StreamSettings:
    """What an extractor actor needs (picklable): the prepared data's extractor and the actor pool's size."""

    extractor: str  # FeaturesConfig as JSON, as `prepare` used it (dataset.json features.extractor)
    feature_dir: str  # files the extractor fitted on the corpus (the builtin codebook): <data_dir>/features
    clip_seconds: float  # explicit prompt/emotion files were cut to their first seconds at prepare
    sample_rate: int  # the extractor's input rate
    actors: int = 1  # per rank and split (train.scaling.feature_actors)
    cpus: float = 0.5
    gpus: float = 0.0


def stream_settings(data_dirs: list[str], actors: int = 1, cpus: float = 0.5, gpus: float = 0.0) -> StreamSettings | None:
    """The streaming settings of prepared `data_dirs` (their `dataset.json`), or None when they store features.

    Raises when the folders disagree on the mode or on the extractor (one actor pool serves them all)."""
    infos = []
    for d in data_dirs:
        meta = Path(d) / "dataset.json"
        feats = json.loads(meta.read_text()).get("features", {}) if meta.is_file() else {}
        infos.append((d, feats.get("mode") or "stored", feats))  # no mode: prepared before modes existed
    modes = {mode for _, mode, _ in infos}
    if modes == {"stored"}:
        return None
    if len(modes) > 1:
        raise DataError("train.mixture mixes data.features.mode stored and streaming datasets ("
                        + ", ".join(f"{d}: {m}" for d, m, _ in infos) + "); prepare them with one mode")
    first_dir, _, first = infos[0]
    for d, _, feats in infos[1:]:
        for key in ("extractor", "clip_seconds", "sample_rate"):
            if feats.get(key) != first.get(key):
                raise DataError(f"streaming datasets {first_dir} and {d} were prepared with another features.{key} "
                                f"({first.get(key)!r} vs {feats.get(key)!r}); one extractor pool serves a run: "
                                "prepare them with the same data.features and data.prompt.max_seconds")
    return StreamSettings(json.dumps(first["extractor"], sort_keys=True), str(Path(first_dir) / "features"),
                          float(first["clip_seconds"]), int(first["sample_rate"]), actors, cpus, gpus)


def with_requests(batch: pa.Table, clip: str, path: list, seconds: np.ndarray, start: np.ndarray,
                  total: np.ndarray) -> pa.Table:
    """`batch` + the request columns of `clip` ("prompt" or "emo"): one per row, path None = nothing to do."""
    cols = (pa.array(path, pa.string()), pa.array(np.asarray(seconds, np.float64)),
            pa.array(np.asarray(start, np.int32)), pa.array(np.asarray(total, np.int32)))
    for (name, _), col in zip([f for f in REQUEST_FIELDS if f[0].startswith(f"_{clip}_")], cols):
        batch = batch.append_column(name, col)
    return batch


class StreamFeatures:
    """Ray Data callable class: one extractor per actor (built once); each call fills the requested feature
    blobs of packed micro-batches (`schema.PACKED_SCHEMA`). `fill` does one table (in-process: eval, tests)."""

    def __init__(self, settings: StreamSettings):
        cfg = FeaturesConfig.model_validate_json(settings.extractor)
        if cfg.kind != "builtin":  # the actor's device follows its resources, not the prepare machine's
            cfg = cfg.model_copy(update={"device": "cuda" if settings.gpus > 0 else "cpu"})
        self.settings = settings
        self.extractor = build_extractor(cfg, settings.feature_dir)

    def __call__(self, packed: pa.Table) -> pa.Table:
        return pack_batches([self.fill(t) for t in unpack_batches(packed)])

    def fill(self, batch: pa.Table) -> pa.Table:
        """Batch rows with requests -> `schema.BATCH_SCHEMA` rows with their features."""
        cache: dict[tuple[str, float], np.ndarray] = {}  # a prompt utterance shared by rows is computed once
        for clip, (feats_col, frames_col) in CLIPS.items():
            paths = batch.column(f"_{clip}_path").to_pylist()
            if not any(p is not None for p in paths):
                continue
            seconds = batch.column(f"_{clip}_clip").to_pylist()
            start = batch.column(f"_{clip}_start").to_pylist()
            total = batch.column(f"_{clip}_total").to_pylist()
            frames = batch.column(frames_col).to_pylist()
            blobs = batch.column(feats_col).to_pylist()
            for k, path in enumerate(paths):
                if path is not None:
                    whole = self._features(path, seconds[k], total[k], cache)
                    blobs[k] = whole[start[k]: start[k] + frames[k]].tobytes()
            i = batch.schema.get_field_index(feats_col)
            batch = batch.set_column(i, batch.schema.field(i), pa.array(blobs, pa.binary()))  # keeps nullability
        return batch.drop_columns(REQUEST_COLUMNS)

    def _features(self, path: str, seconds: float, total: int, cache: dict) -> np.ndarray:
        """(frames, dim) float16 features of the file's first `seconds` (0: all), as `prepare` computed them."""
        key = (path, seconds)
        if key not in cache:
            try:
                wav = read_wav16k(path, self.settings.sample_rate, seconds if seconds > 0 else None)
            except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError
                raise DataError(f"streaming features: cannot read {path} ({str(e).splitlines()[0] if str(e) else e!r});"
                                " data.features.mode streaming reads the audio at the paths prepare used, on every "
                                "node that runs an extractor actor") from None
            feats = np.ascontiguousarray(self.extractor.features(wav), dtype=FEATS_DTYPE)
            if feats.shape[0] != total:
                raise DataError(f"streaming features: {path} gives {feats.shape[0]} frames, prepare counted {total}: "
                                "the file changed since prepare; prepare the data again (--restart)")
            cache[key] = feats
        return cache[key]
