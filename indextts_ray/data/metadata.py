"""Metadata stage: stream the manifest, validate fields and text, normalise, tokenise. No audio is decoded.

    manifest --byte ranges of whole lines (~8 MiB), on `data.scan_workers` processes, each range:
                 lines --check_fields--> raw text --normalise--> speakable? --> audio exists, duration
                 (declared or header) in range --> accepted rows (Arrow) + rejected rows
             --in manifest order: global line numbers, duplicate ids (first kept)-->
    accepted table (Arrow, manifest order) + rejected rows
    accepted table --tokenise--> text_ids, n_text (text_too_long rejected)

Accepted rows are kept as Arrow record batches (not Python objects) so millions of rows stay in a few
hundred MB. The result does not depend on the range size or the number of processes: a row's checks use
only the row, and the one check across rows (duplicate ids) runs on the merged id column.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.audio import header_duration
from indextts_ray.data.config import DataConfig
from indextts_ray.data.manifest import (
    Rejection,
    check_manifest,
    is_json_object_line,
    line_ranges,
    parse_json_block,
    parse_line,
    sniff_manifest,
)
from indextts_ray.data.tokenizer import Tokenizer
from indextts_ray.data.validate import (
    Record,
    RowContext,
    check_duration,
    check_fields,
    check_fields_block,
    check_language,
    check_normalised_text,
    check_raw_text,
)
from indextts_ray.errors import DataError
from indextts_ray.text import canonical_language, leftover_characters, normalize_with_config

log = logging.getLogger(__name__)

META_SCHEMA = pa.schema([
    ("source", pa.string()), ("line", pa.int64()), ("id", pa.string()), ("audio_path", pa.string()),
    ("text", pa.string()), ("text_norm", pa.string()), ("speaker", pa.string()), ("language", pa.string()),
    ("emotion", pa.string()), ("emotion_id", pa.int16()), ("duration", pa.float64()),
    ("declared_duration", pa.bool_()), ("prompt_audio_path", pa.string()), ("emotion_audio_path", pa.string()),
    ("codes_path", pa.string()),
])
# what a range returns for its accepted rows: + whether the language was detected (counted after dedup)
_RANGE_SCHEMA = META_SCHEMA.append(pa.field("language_detected", pa.bool_()))
_BATCH_ROWS = 50_000
_BLOCK_LINES = 2048  # lines parsed and field-checked together (a failing block falls back to line by line)
CHUNK_BYTES = 8 << 20  # ~40k JSONL rows: large enough to amortise a task, small enough to bound a worker's memory


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
    # line -> (speaker, emotion, language) of each rejected row that passed the field checks (`data/shares.py`)
    rejected_groups: dict[int, tuple] = field(default_factory=dict)


def resolve_inputs(cfg: DataConfig) -> tuple[Path, Path]:
    """(manifest, dataset root) as absolute paths (see `DataConfig`)."""
    if not cfg.manifest:
        raise DataError("no manifest: set data.manifest (a JSONL, MeloTTS .list or IndexTTS2 precomputed file)")
    root = Path(cfg.root).absolute() if cfg.root else None
    manifest = Path(cfg.manifest)
    if not manifest.is_absolute():
        manifest = (root or Path.cwd()) / manifest
    manifest = Path(os.path.normpath(manifest.absolute()))
    if manifest.is_dir():
        raise DataError(f"{manifest} is a directory, not a manifest; set data.manifest to the JSONL or .list file "
                        "inside it")
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest} (data.manifest is relative to data.root)")
    return manifest, Path(os.path.normpath(root)) if root else manifest.parent


# the likely cause when one reason rejected most rows of a manifest that gave nothing
_CAUSES = {
    "bad_utf8": "is the file UTF-8?", "not_json": "is the file UTF-8 JSONL, one object per line?",
    "bad_list_line": "is the file a MeloTTS list, path|speaker|language|text[|emotion]?",
    "missing_field": "every row needs id, audio_path, text and speaker",
    "missing_audio": "audio paths are relative to the manifest's folder",
    "path_outside_root": "paths must stay under data.root", "unknown_language": "data.languages lists the "
    "accepted languages", "bad_id": "ids are used as file names", "too_short": "see data.min_duration",
    "too_long": "see data.max_duration",
}


def nothing_accepted(scan: MetadataScan) -> str | None:
    """The one-line error for a manifest of which no row was accepted (None if some were), naming the cause:
    "m.jsonl: 0 of 41 rows accepted: bad_utf8 ×20, not_json ×21 (is the file UTF-8 JSONL, ...?)"."""
    if scan.table.num_rows:
        return None
    sniffed = sniff_manifest(scan.manifest)
    if scan.rows_in == 0:
        return f"{scan.manifest}: no rows ({sniffed or 'only blank lines'})"
    reasons = Counter(r["reason"] for r in scan.rejected).most_common()
    counts = ", ".join(f"{reason} ×{n}" for reason, n in reasons)
    cause = sniffed or _CAUSES.get(reasons[0][0], "see rejected.parquet for each row's detail")
    if not sniffed and reasons[0][0] == "missing_audio":
        cause += f": {scan.manifest.parent}"
    elif not sniffed and reasons[0][0] == "path_outside_root":
        cause += f": {scan.root}"
    return f"{scan.manifest}: 0 of {scan.rows_in} rows accepted: {counts} ({cause})"


def reject_row(source: str, line: int, row_id: str | None, r: Rejection) -> dict:
    return {"source": source, "line": line, "id": row_id, "reason": r.code, "detail": r.detail}


def scan_manifest(cfg: DataConfig, emotion_labels: list[str], chunk_bytes: int = CHUNK_BYTES) -> MetadataScan:
    """Validate every manifest row's metadata; return the accepted rows and the rejected ones.

    Args:
        cfg: the `data` section (`scan_workers` processes read ranges of about `chunk_bytes` in parallel).
        emotion_labels: the model's emotion labels (a row's emotion must be one of them).
        chunk_bytes: the size of one range of whole lines; the result is the same for any value.
    """
    manifest, root = resolve_inputs(cfg)
    manifest, fmt = check_manifest(manifest, cfg.format)
    job = _ScanJob(str(manifest), str(root), fmt, list(emotion_labels), cfg)
    ranges = line_ranges(manifest, chunk_bytes)
    scan = MetadataScan(pa.table({}), [], 0, manifest, root, fmt)
    batches: list[pa.RecordBatch] = []
    rejected: list[_Rejected] = []
    ignored: Counter = Counter()
    lines_before, t0 = 0, time.monotonic()
    for part in _scan_ranges(job, ranges, cfg.scan_workers):
        # line numbers in a range count from its first line: make them the file's. The columns are copied into
        # Arrow's memory pool so the received bytes go now: buffers freed back to Python's allocator would not
        # be reused for the Arrow buffers built later, and the peak memory would hold both.
        acc = pa.ipc.open_stream(part.accepted).read_next_batch()
        batches.append(pa.RecordBatch.from_arrays(
            [pc.add(c, lines_before) if name == "line" else pa.concat_arrays([c])
             for name, c in zip(acc.schema.names, acc.columns)], schema=acc.schema))
        del acc
        rejected += [r._replace(line=r.line + lines_before) for r in part.rejected]
        lines_before += part.lines
        scan.rows_in += part.rows_in
        scan.blank_lines += part.lines - part.rows_in
        scan.leftover_chars.update(part.leftover_chars)
        ignored.update(part.ignored_fields)
        if len(ranges) > 1:
            log.info("metadata: %d rows read (%.0f rows/s)", scan.rows_in, scan.rows_in / (time.monotonic() - t0))
    del part
    _drop_duplicate_ids(scan, batches, rejected)
    scan.ignored_fields = dict(sorted(ignored.items()))
    return scan


@dataclass
class _ScanJob:
    """What every range needs (picklable: sent once to each worker process)."""

    manifest: str
    root: str
    format: str
    emotion_labels: list[str]
    cfg: DataConfig


class _Rejected(NamedTuple):
    line: int
    id: str | None
    reason: Rejection
    passed_fields: bool  # the row passed `check_fields`, so its id counts for duplicate detection
    duration_from_header: bool
    group: tuple | None = None  # (speaker, emotion, language) when the fields passed


@dataclass
class _RangeResult:
    lines: int  # lines in the range, blank ones included
    rows_in: int
    accepted: bytes  # Arrow IPC stream of one _RANGE_SCHEMA batch, line numbers relative to the range
    rejected: list[_Rejected]
    ignored_fields: Counter
    leftover_chars: Counter  # over the accepted rows' text_norm


def _scan_ranges(job: _ScanJob, ranges: list[tuple[int, int]], workers: int) -> Iterator[_RangeResult]:
    """Each range's result, in file order: in this process, or on `workers` processes."""
    workers = min(workers, len(ranges))
    if workers <= 1:
        yield from (_scan_range(job, r) for r in ranges)
        return
    # spawn: a clean interpreter (no fork of a process that may run Ray's threads); the workers are direct
    # children, so their peak memory shows in getrusage(RUSAGE_CHILDREN)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_set_worker_job, initargs=(job,)) as pool:
        try:
            yield from pool.map(_scan_range_in_worker, ranges)
        except BrokenProcessPool as e:
            raise DataError(f"a metadata scan worker process died ({e}); it may have run out of memory, or a "
                            "script that calls prepare lacks `if __name__ == '__main__':` (worker processes "
                            "import the main module); data.scan_workers=1 scans in this process") from None


_WORKER_JOB: _ScanJob | None = None


def _set_worker_job(job: _ScanJob) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _scan_range_in_worker(byte_range: tuple[int, int]) -> _RangeResult:
    return _scan_range(_WORKER_JOB, byte_range)


def _scan_range(job: _ScanJob, byte_range: tuple[int, int]) -> _RangeResult:
    """Check every row of one range of whole lines (everything but duplicate ids)."""
    start, end = byte_range
    with open(job.manifest, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the range ends with a newline (or is empty)
        lines.pop()
    if start == 0 and lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]  # UTF-8 byte order mark written by some editors
    ctx = RowContext(Path(job.manifest).parent, Path(job.root), job.emotion_labels, job.format, job.cfg.languages)
    accepted: list[tuple] = []
    rejected: list[_Rejected] = []
    rows_in = 0
    for first in range(0, len(lines), _BLOCK_LINES):
        numbered = [(first + i + 1, raw) for i, raw in enumerate(lines[first: first + _BLOCK_LINES]) if raw.strip()]
        rows_in += len(numbered)
        for lineno, raw, rec in _block_records(numbered, job, ctx):
            if rec is None:  # the general case, one line at a time
                row = parse_line(raw, lineno, job.manifest, job.format)
                rec = check_fields(row, ctx)
                if isinstance(rec, Rejection):
                    row_id = (row.fields or {}).get("id")
                    rejected.append(_Rejected(lineno, None if row_id is None else str(row_id), rec, False, False))
                    continue
            got = _check_record(rec, ctx, job.cfg)
            (rejected if isinstance(got, _Rejected) else accepted).append(got)
    cols = list(zip(*accepted)) or [() for _ in _RANGE_SCHEMA]
    text_norm = cols[_RANGE_SCHEMA.get_field_index("text_norm")]
    batch = pa.RecordBatch.from_arrays([pa.array(c, f.type) for c, f in zip(cols, _RANGE_SCHEMA)],
                                       schema=_RANGE_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _RANGE_SCHEMA) as writer:
        writer.write_batch(batch)
    return _RangeResult(
        lines=len(lines), rows_in=rows_in, accepted=sink.getvalue().to_pybytes(),
        rejected=rejected, ignored_fields=Counter(ctx.ignored_fields),
        # one call per range: building a Counter per row was a large share of the scan's time
        leftover_chars=leftover_characters("".join(text_norm)),
    )


def _block_records(numbered: list[tuple[int, bytes]], job: _ScanJob,
                   ctx: RowContext) -> Iterator[tuple[int, bytes, Record | None]]:
    """(line number, line, its `Record` if the vectorised field checks pass it, else None), in line order.

    JSON lines that look like objects are parsed by Arrow and checked a block at a time; anything these
    checks cannot decide exactly (other formats, odd lines or values) is None: `check_fields` decides.
    """
    if job.format == "melotts":
        yield from ((lineno, raw, None) for lineno, raw in numbered)
        return
    objects = [k for k, (_, raw) in enumerate(numbered) if is_json_object_line(raw)]
    table = parse_json_block([numbered[k][1] for k in objects])
    records = None if table is None else check_fields_block(table, [numbered[k][0] for k in objects],
                                                            job.manifest, ctx)
    by_row = dict(zip(objects, records)) if records is not None else {}
    for k, (lineno, raw) in enumerate(numbered):
        yield lineno, raw, by_row.get(k)


def _check_record(rec: Record, ctx: RowContext, cfg: DataConfig) -> tuple | _Rejected:
    """The checks after `check_fields` (all but duplicate ids): the accepted row (`_RANGE_SCHEMA` order), or why
    not."""

    language = canonical_language(rec.language) or "und"  # the normalised one once known

    def reject(r: Rejection, from_header: bool = False) -> _Rejected:
        return _Rejected(rec.line, rec.id, r, True, from_header, (rec.speaker, rec.emotion, language))

    bad = check_raw_text(rec.text)
    if bad:
        return reject(bad)
    norm = normalize_with_config(rec.text, rec.language or None, cfg.text)
    language = norm.language
    bad = check_language(norm.language, norm.detected, ctx) or check_normalised_text(norm.text)
    if bad:
        return reject(bad)
    # every path is located (symlinks resolved, nothing opened) before the header read below opens one
    for key in ("audio_path", "prompt_audio_path", "emotion_audio_path", "codes_path"):
        path = getattr(rec, key)
        bad = None if path is None else ctx.locate(path, key)
        if bad:
            return reject(bad)
    duration = rec.duration
    if duration is None:
        got = header_duration(rec.audio_path)
        if isinstance(got, Rejection):
            return reject(got)
        duration = got
    bad = check_duration(duration, cfg.min_duration, cfg.max_duration)
    if bad:
        return reject(bad, from_header=rec.duration is None)
    return (rec.source, rec.line, rec.id, rec.audio_path, rec.text, norm.text, rec.speaker, norm.language,
            rec.emotion, rec.emotion_id, duration, rec.duration is not None, rec.prompt_audio_path,
            rec.emotion_audio_path, rec.codes_path, norm.detected)


def _drop_duplicate_ids(scan: MetadataScan, batches: list[pa.RecordBatch | None], rejected: list[_Rejected]) -> None:
    """The first row (in file order) that passed the field checks keeps its id; later ones are rejected.

    Sets `scan.table`, `scan.rejected` (in line order) and the counts that only accepted rows contribute to.
    """
    candidates = [r for r in rejected if r.passed_fields]
    lines = np.concatenate([b.column("line").to_numpy() for b in batches] +
                           [np.array([r.line for r in candidates], dtype=np.int64)])
    ids = pa.concat_arrays([b.column("id") for b in batches] + [pa.array([r.id for r in candidates], pa.string())])
    order = np.argsort(lines, kind="stable")
    # dictionary codes are given in order of first appearance: a row is the first with its id iff its code
    # is above every earlier code
    codes = pc.dictionary_encode(ids.take(pa.array(order))).indices.to_numpy()
    dup = np.empty(len(order), dtype=bool)
    dup[order] = codes <= np.r_[-1, np.maximum.accumulate(codes)[:-1]]

    out: list[pa.RecordBatch] = []
    rows: list[tuple[int, dict]] = []
    source = str(scan.manifest)
    at, detected, from_header = 0, 0, 0
    for k, b in enumerate(batches):
        batches[k] = None  # a filtered batch is a copy: let the original go as we move on
        d = dup[at: at + b.num_rows]
        at += b.num_rows
        if d.any():
            for i in np.flatnonzero(d):
                row_id, line = b.column("id")[i].as_py(), b.column("line")[i].as_py()
                rows.append((line, _duplicate(source, line, row_id)))
                scan.rejected_groups[line] = tuple(b.column(k)[i].as_py() for k in ("speaker", "emotion", "language"))
            scan.leftover_chars.subtract(leftover_characters("".join(b.column("text_norm").filter(pa.array(d)).to_pylist())))
            b = b.filter(pa.array(~d))
        detected += int(pc.sum(b.column("language_detected")).as_py() or 0)
        from_header += b.num_rows - int(pc.sum(b.column("declared_duration")).as_py() or 0)
        out.append(b.drop_columns(["language_detected"]))
    cand_dup = iter(dup[at:])
    for r in rejected:
        if r.group is not None:
            scan.rejected_groups[r.line] = r.group
        if r.passed_fields and next(cand_dup):
            rows.append((r.line, _duplicate(source, r.line, r.id)))
            continue
        from_header += r.duration_from_header
        rows.append((r.line, reject_row(source, r.line, r.id, r.reason)))
    for key, n in (("language_detected", detected), ("duration_from_header", from_header)):
        if n:
            scan.counts[key] += n
    rows.sort(key=lambda lr: lr[0])  # one rejection per line: line order is the single-pass order
    scan.rejected = [r for _, r in rows]
    scan.leftover_chars = +scan.leftover_chars  # drop characters whose count fell to zero
    scan.table = pa.Table.from_batches(out, schema=META_SCHEMA)


def _duplicate(source: str, line: int, row_id: str) -> dict:
    return reject_row(source, line, row_id, Rejection("duplicate_id", f"id {row_id!r} appears on an earlier line"))


def tokenize_table(scan: MetadataScan, tok: Tokenizer, max_text_tokens: int) -> None:
    """Add `text_ids`/`n_text` to the accepted table; rows over `max_text_tokens` move to `rejected`."""
    batches, ids_chunks, moved = [], [], []
    for batch in scan.table.to_batches(max_chunksize=_BATCH_ROWS):
        encoded = tok.encode_batch(batch.column("text_norm").to_pylist())
        n = np.fromiter((len(e) for e in encoded), dtype=np.int32, count=len(encoded))
        keep = n <= max_text_tokens
        if not keep.all():
            for i in np.flatnonzero(~keep):
                scan.rejected_groups[batch.column("line")[i].as_py()] = tuple(
                    batch.column(k)[i].as_py() for k in ("speaker", "emotion", "language"))
                moved.append(reject_row(
                    batch.column("source")[i].as_py(), batch.column("line")[i].as_py(), batch.column("id")[i].as_py(),
                    Rejection("text_too_long", f"{n[i]} tokens > max_text_tokens {max_text_tokens}")))
            batch = batch.filter(pa.array(keep))  # only batches that lose rows are copied
            encoded = [e for e, k in zip(encoded, keep) if k]
        batches.append(batch)
        ids_chunks.append(pa.array(encoded, type=pa.list_(pa.int32())))
    scan.rejected += moved
    table = pa.Table.from_batches(batches, schema=scan.table.schema)
    text_ids = pa.chunked_array(ids_chunks, type=pa.list_(pa.int32()))
    n_text = pc.list_value_length(text_ids).cast(pa.int32())
    scan.table = table.append_column("text_ids", text_ids).append_column("n_text", n_text)
