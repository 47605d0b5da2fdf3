"""Metadata stage: stream the manifest, validate fields and text, normalise, tokenise. No audio is decoded.

    manifest lines --check_fields--> duplicate ids --raw text--> normalise --speakable?--> audio exists,
    duration (declared or header) in range --> accepted table (Arrow, manifest order)  + rejected rows
    accepted table --tokenise--> text_ids, n_text (text_too_long rejected)

Accepted rows are kept as Arrow record batches (not Python objects) so millions of rows stay in a few
hundred MB.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.audio import header_duration
from indextts_ray.data.config import DataConfig
from indextts_ray.data.manifest import RawRow, Rejection, count_blank_lines, detect_format, iter_manifest
from indextts_ray.data.tokenizer import Tokenizer
from indextts_ray.data.validate import (
    RowContext,
    check_duration,
    check_fields,
    check_normalised_text,
    check_raw_text,
)
from indextts_ray.errors import DataError
from indextts_ray.text import leftover_characters, normalize_with_config

log = logging.getLogger(__name__)

META_SCHEMA = pa.schema([
    ("source", pa.string()), ("line", pa.int64()), ("id", pa.string()), ("audio_path", pa.string()),
    ("text", pa.string()), ("text_norm", pa.string()), ("speaker", pa.string()), ("language", pa.string()),
    ("emotion", pa.string()), ("emotion_id", pa.int16()), ("duration", pa.float64()),
    ("declared_duration", pa.bool_()), ("prompt_audio_path", pa.string()), ("emotion_audio_path", pa.string()),
    ("codes_path", pa.string()),
])
_BATCH_ROWS = 50_000


@dataclass
class MetadataScan:
    table: pa.Table  # accepted rows (META_SCHEMA, + text_ids/n_text after `tokenize_table`)
    rejected: list[dict]  # REJECTED_SCHEMA rows
    rows_in: int
    manifest: Path
    root: Path
    format: str
    blank_lines: int = 0
    counts: Counter = field(default_factory=Counter)  # language_detected, duration_from_header
    ignored_fields: dict[str, int] = field(default_factory=dict)
    leftover_chars: Counter = field(default_factory=Counter)


def resolve_inputs(cfg: DataConfig) -> tuple[Path, Path]:
    """(manifest, dataset root) as absolute paths (see `DataConfig`)."""
    if not cfg.manifest:
        raise DataError("no manifest: set data.manifest (a JSONL, MeloTTS .list or IndexTTS2 precomputed file)")
    root = Path(cfg.root).absolute() if cfg.root else None
    manifest = Path(cfg.manifest)
    if not manifest.is_absolute():
        manifest = (root or Path.cwd()) / manifest
    manifest = Path(os.path.normpath(manifest.absolute()))
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest} (data.manifest is relative to data.root)")
    return manifest, Path(os.path.normpath(root)) if root else manifest.parent


def reject_row(source: str, line: int, row_id: str | None, r: Rejection) -> dict:
    return {"source": source, "line": line, "id": row_id, "reason": r.code, "detail": r.detail}


def scan_manifest(cfg: DataConfig, emotion_labels: list[str]) -> MetadataScan:
    """Validate every manifest row's metadata; return the accepted rows and the rejected ones."""
    manifest, root = resolve_inputs(cfg)
    fmt = detect_format(manifest) if cfg.format == "auto" else cfg.format
    ctx = RowContext(manifest.parent, root, emotion_labels, fmt)
    scan = MetadataScan(pa.table({}), [], 0, manifest, root, fmt, blank_lines=count_blank_lines(manifest))
    seen: set[str] = set()
    batches: list[pa.RecordBatch] = []
    cols: dict[str, list] = {name: [] for name in META_SCHEMA.names}
    t0 = time.monotonic()
    for raw in iter_manifest(manifest, fmt):
        scan.rows_in += 1
        row = _check_row(raw, ctx, cfg, seen, scan)
        if isinstance(row, dict):
            for k, v in row.items():
                cols[k].append(v)
            if len(cols["id"]) >= _BATCH_ROWS:
                batches.append(_flush(cols, scan))
                cols = {name: [] for name in META_SCHEMA.names}
        if scan.rows_in % 200_000 == 0:
            log.info("metadata: %d rows read (%.0f rows/s)", scan.rows_in, scan.rows_in / (time.monotonic() - t0))
    batches.append(_flush(cols, scan))
    scan.table = pa.Table.from_batches(batches, schema=META_SCHEMA)
    scan.ignored_fields = dict(sorted(ctx.ignored_fields.items()))
    return scan


def _flush(cols: dict[str, list], scan: MetadataScan) -> pa.RecordBatch:
    # one call per batch: building a Counter per row was a large share of the scan's time
    scan.leftover_chars.update(leftover_characters("".join(cols["text_norm"])))
    return pa.RecordBatch.from_pydict(cols, schema=META_SCHEMA)


def _check_row(raw: RawRow, ctx: RowContext, cfg: DataConfig, seen: set[str], scan: MetadataScan) -> dict | None:
    """One row's metadata checks; appends to `scan.rejected` and returns None when it is rejected."""
    rec = check_fields(raw, ctx)
    if isinstance(rec, Rejection):
        fields = raw.fields or {}
        row_id = fields.get("id")
        scan.rejected.append(reject_row(raw.source, raw.line, None if row_id is None else str(row_id), rec))
        return None

    def reject(r: Rejection) -> None:
        scan.rejected.append(reject_row(rec.source, rec.line, rec.id, r))

    if rec.id in seen:
        reject(Rejection("duplicate_id", f"id {rec.id!r} appears on an earlier line"))
        return None
    seen.add(rec.id)
    bad = check_raw_text(rec.text)
    if bad:
        reject(bad)
        return None
    norm = normalize_with_config(rec.text, rec.language or None, cfg.text)
    bad = check_normalised_text(norm.text)
    if bad:
        reject(bad)
        return None
    for key in ("prompt_audio_path", "emotion_audio_path", "codes_path"):
        path = getattr(rec, key)
        if path is not None and not os.path.isfile(path):
            reject(Rejection("bad_codes" if key == "codes_path" else "missing_audio", f"{key} {path} does not exist"))
            return None
    duration = rec.duration
    if duration is None:
        got = header_duration(rec.audio_path)
        if isinstance(got, Rejection):
            reject(got)
            return None
        duration = got
        scan.counts["duration_from_header"] += 1
    elif not os.path.isfile(rec.audio_path):
        reject(Rejection("missing_audio", f"{rec.audio_path} does not exist"))
        return None
    bad = check_duration(duration, cfg.min_duration, cfg.max_duration)
    if bad:
        reject(bad)
        return None
    if norm.detected:
        scan.counts["language_detected"] += 1
    return {
        "source": rec.source, "line": rec.line, "id": rec.id, "audio_path": rec.audio_path, "text": rec.text,
        "text_norm": norm.text, "speaker": rec.speaker, "language": norm.language, "emotion": rec.emotion,
        "emotion_id": rec.emotion_id, "duration": duration, "declared_duration": rec.duration is not None,
        "prompt_audio_path": rec.prompt_audio_path, "emotion_audio_path": rec.emotion_audio_path,
        "codes_path": rec.codes_path,
    }


def tokenize_table(scan: MetadataScan, tok: Tokenizer, max_text_tokens: int) -> None:
    """Add `text_ids`/`n_text` to the accepted table; rows over `max_text_tokens` move to `rejected`."""
    ids_chunks, keep_chunks = [], []
    for batch in scan.table.to_batches(max_chunksize=_BATCH_ROWS):
        encoded = [tok.encode(t) for t in batch.column("text_norm").to_pylist()]
        n = np.fromiter((len(e) for e in encoded), dtype=np.int32, count=len(encoded))
        keep = n <= max_text_tokens
        for i in np.flatnonzero(~keep):
            scan.rejected.append(reject_row(
                batch.column("source")[i].as_py(), batch.column("line")[i].as_py(), batch.column("id")[i].as_py(),
                Rejection("text_too_long", f"{n[i]} tokens > max_text_tokens {max_text_tokens}")))
        ids_chunks.append(pa.array([e for e, k in zip(encoded, keep) if k], type=pa.list_(pa.int32())))
        keep_chunks.append(keep)
    keep = np.concatenate(keep_chunks) if keep_chunks else np.zeros(0, dtype=bool)
    table = scan.table.filter(pa.array(keep, type=pa.bool_())) if len(keep) else scan.table
    text_ids = pa.chunked_array(ids_chunks, type=pa.list_(pa.int32()))
    n_text = pc.list_value_length(text_ids).cast(pa.int32())
    scan.table = table.append_column("text_ids", text_ids).append_column("n_text", n_text)
