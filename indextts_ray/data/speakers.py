"""Speaker mapping for the Stage-2 speaker classifier: the top-k speakers with enough samples → class ids.

Counting is streaming and keeps only `speaker -> count` in memory: Parquet shards are read one file at a
time, column `speaker` only, and grouped with pyarrow; JSONL / MeloTTS manifests are read line by line.
Class ids follow a deterministic order: count descending, then speaker name ascending.

`speaker_mapping.json`:

    {"format_version": 1, "source": ..., "top_k": 500, "min_samples": 50,
     "mapping": {speaker: class_id}, "counts": {speaker: samples} (selected speakers),
     "summary": {total_samples, unique_speakers, speakers_min_samples, selected_speakers, selected_samples,
                 selected_percent, skipped_rows: {reason: n}}}
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from indextts_ray import storage
from indextts_ray.data.manifest import iter_manifest
from indextts_ray.data.store import SHARD_GLOB, SHARD_SUFFIX, read_table
from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write_json

FORMAT_VERSION = 1


@dataclass
class SpeakerMapping:
    """Selected speakers (`mapping`: speaker → class id), their sample counts and the corpus summary."""

    mapping: dict[str, int]
    counts: dict[str, int]
    summary: dict
    source: str = ""
    top_k: int = 0
    min_samples: int = 0

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "source": self.source, "top_k": self.top_k,
                "min_samples": self.min_samples, "mapping": self.mapping, "counts": self.counts,
                "summary": self.summary}

    def report(self) -> str:
        """The human summary `indextts-ray speakers` prints."""
        s = self.summary
        lines = [
            f"total samples            {s['total_samples']:,}",
            f"unique speakers          {s['unique_speakers']:,}",
            f"speakers with >= {self.min_samples:<7} {s['speakers_min_samples']:,}",
            f"selected speakers        {s['selected_speakers']:,} (top_k {self.top_k}), "
            f"{s['selected_samples']:,} samples ({s['selected_percent']:.2f}%)",
        ]
        if s["skipped_rows"]:
            lines.append("skipped rows             " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["skipped_rows"].items())))
        return "\n".join(lines)


def shard_files(source: Path) -> list[Path]:
    """Shards under a prepared folder (any depth: `<out>/train`, or `<out>` for train + val)."""
    if source.is_file():
        return [source]
    files = sorted(source.rglob(SHARD_GLOB))
    if not files:
        raise DataError(f"{source}: no {SHARD_GLOB} files below it; pass a prepared shard folder "
                        "(e.g. <output_dir>/train) or a manifest (.jsonl / .list)")
    return files


def count_shards(files: list[Path]) -> tuple[Counter, dict[str, int]]:
    """Samples per speaker over shard files (Arrow IPC, or Parquet), one file and one column at a time.

    Each file's counts are grouped in Arrow and merged every `_MERGE_EVERY` files, so memory holds about one
    row per distinct speaker, not per sample.
    """
    counts: Counter = Counter()
    skipped: dict[str, int] = {}
    parts: dict[pa.DataType, list[pa.Table]] = {}  # per-file counts, by the speaker column's type
    for f in dict.fromkeys(files):  # the same file twice would count twice
        try:
            table = pq.read_table(f, columns=["speaker"]) if Path(f).suffix == ".parquet" \
                else read_table(f, ["speaker"])
        except (KeyError, ValueError) as e:  # pyarrow: missing column -> ArrowInvalid (a ValueError)
            raise DataError(f"{f}: cannot read column 'speaker' ({e}); is this a prepared shard?") from None
        nulls = table.column("speaker").null_count
        if nulls:
            skipped["missing_speaker"] = skipped.get("missing_speaker", 0) + nulls
        same_type = parts.setdefault(table.schema.field("speaker").type, [])
        same_type.append(_renamed(table.group_by("speaker").aggregate([("speaker", "count")]), "speaker_count"))
        if len(same_type) >= _MERGE_EVERY:
            same_type[:] = [_merge_counts(same_type)]
    for same_type in parts.values():
        merged = _merge_counts(same_type)
        for spk, n in zip(merged.column("speaker").to_pylist(), merged.column("n").to_pylist()):
            if spk is not None:  # a null speaker's group counts 0 (nulls are counted as skipped above)
                counts[str(spk).strip()] += n
    return counts, skipped


_MERGE_EVERY = 64


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    return _renamed(pa.concat_tables(parts).group_by("speaker").aggregate([("n", "sum")]), "n_sum")


def _renamed(grouped: pa.Table, count_column: str) -> pa.Table:
    return grouped.rename_columns(["n" if name == count_column else name for name in grouped.column_names])


def count_manifest(path: Path, fmt: str = "auto") -> tuple[Counter, dict[str, int]]:
    """Samples per speaker over a JSONL / MeloTTS manifest, line by line. Unusable lines are counted by reason."""
    counts: Counter = Counter()
    skipped: dict[str, int] = {}
    for row in iter_manifest(path, fmt):
        spk = None if row.fields is None else row.fields.get("speaker")
        if row.error is not None:
            reason = row.error.code
        elif spk is None or (isinstance(spk, str) and not spk.strip()):
            reason = "missing_speaker"
        elif isinstance(spk, bool) or not isinstance(spk, str | int):  # same rule as validation: ids may be ints
            reason = "bad_speaker"
        else:
            counts[str(spk).strip()] += 1
            continue
        skipped[reason] = skipped.get(reason, 0) + 1
    return counts, skipped


def select_speakers(counts: Counter, top_k: int, min_samples: int) -> list[str]:
    """Speakers with >= `min_samples`, by count descending then name, at most `top_k`."""
    eligible = [(-n, spk) for spk, n in counts.items() if n >= min_samples]
    eligible.sort()
    return [spk for _, spk in eligible[:top_k]]


def build_speaker_mapping(source: str | os.PathLike, top_k: int = 500, min_samples: int = 50,
                          fmt: str = "auto") -> SpeakerMapping:
    """Count samples per speaker in `source` and map the selected speakers to class ids 0..k-1.

    Args:
        source: a folder of prepared `shard-*.arrow` (searched recursively), one shard file, or a
            JSONL / MeloTTS manifest.
        top_k: at most this many speakers (the classifier's classes).
        min_samples: a speaker needs at least this many samples to be selected.
        fmt: manifest format for manifests (`auto`, `jsonl`, `melotts`, `indextts_precomputed`).
    """
    if top_k < 1 or min_samples < 1:
        raise DataError(f"top_k ({top_k}) and min_samples ({min_samples}) must be >= 1")
    if storage.is_remote(source):  # a prepared folder on an object store: its shards, read there
        counts, skipped = count_shards(storage.glob(source, SHARD_GLOB, recursive=True))
        return _mapping(source, counts, skipped, top_k, min_samples)
    source = Path(source)
    if not source.exists():
        raise DataError(f"speaker source not found: {source} (a shard folder or a manifest)")
    if source.is_dir() or source.suffix in (".parquet", SHARD_SUFFIX):
        counts, skipped = count_shards(shard_files(source))
    else:
        counts, skipped = count_manifest(source, fmt)
    return _mapping(source, counts, skipped, top_k, min_samples)


def _mapping(source, counts: Counter, skipped: dict[str, int], top_k: int, min_samples: int) -> SpeakerMapping:
    if not counts:
        raise DataError(f"{source}: no rows with a speaker (skipped: {skipped or 'none'})")
    selected = select_speakers(counts, top_k, min_samples)
    total = sum(counts.values())
    selected_samples = sum(counts[s] for s in selected)
    summary = {
        "total_samples": total,
        "unique_speakers": len(counts),
        "speakers_min_samples": sum(1 for n in counts.values() if n >= min_samples),
        "selected_speakers": len(selected),
        "selected_samples": selected_samples,
        "selected_percent": round(100.0 * selected_samples / total, 4),
        "skipped_rows": dict(sorted(skipped.items())),
    }
    return SpeakerMapping(mapping={s: i for i, s in enumerate(selected)}, counts={s: counts[s] for s in selected},
                          summary=summary, source=str(source), top_k=top_k, min_samples=min_samples)


def save_speaker_mapping(sm: SpeakerMapping, path: str | os.PathLike) -> Path:
    """Write `speaker_mapping.json` atomically."""
    return atomic_write_json(path, sm.to_json())


def load_speaker_mapping(path: str | os.PathLike) -> SpeakerMapping:
    """Read a `speaker_mapping.json`, checking that class ids are exactly 0..k-1."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"speaker mapping not found: {path} (run `indextts-ray speakers`)") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e}); rerun `indextts-ray speakers`") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("mapping"), dict):
        raise DataError(f"{path}: no 'mapping' object; rerun `indextts-ray speakers`")
    if obj.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {obj.get('format_version')} is not {FORMAT_VERSION}; "
                        "rerun `indextts-ray speakers`")
    mapping = obj["mapping"]
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise DataError(f"{path}: class ids are not 0..{len(mapping) - 1} without gaps; rerun `indextts-ray speakers`")
    return SpeakerMapping(mapping={str(k): int(v) for k, v in mapping.items()},
                          counts={str(k): int(v) for k, v in obj.get("counts", {}).items()},
                          summary=obj.get("summary", {}), source=obj.get("source", ""),
                          top_k=int(obj.get("top_k", 0)), min_samples=int(obj.get("min_samples", 0)))
