"""Manifest formats, read lazily line by line with source line numbers, and written.

* `jsonl`: one object per line, `{id, audio_path, text, speaker, language, duration}` plus optional `emotion`,
  `prompt_audio_path`, `emotion_audio_path`.
* `melotts`: `path|speaker|language|text` with an optional 5th `emotion` column. There is no id: the id is the
  audio path as written, without its extension. There is no duration: it is read from the audio header.
* `indextts_precomputed`: community IndexTTS2 JSONL (`text_ids_path`, `codes_path`, `condition_path`,
  `emo_vec_path`, ...). Only `codes_path` is used (MaskGCT codes, same codec as ours); `condition_path` and
  `emo_vec_path` hold GPT-derived latents that our trainable conditioners cannot use, and text is re-tokenised.

Blank lines are not rows. A line that cannot be decoded or parsed becomes a `RawRow` with an `error`, so every
row is accounted for downstream.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write_text

FORMATS = ("jsonl", "melotts", "indextts_precomputed")
REQUIRED = ("id", "audio_path", "text", "speaker")
OPTIONAL = ("language", "duration", "emotion", "prompt_audio_path", "emotion_audio_path")
PRECOMPUTED_USED = ("codes_path",)


@dataclass(frozen=True)
class Rejection:
    """Why a row is rejected: a stable short code (see `validate.REASONS`) and a human detail."""

    code: str
    detail: str


@dataclass
class RawRow:
    """One non-blank manifest line: its fields, or the error that kept it from being parsed."""

    source: str
    line: int
    fields: dict[str, Any] | None
    error: Rejection | None = None


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format from the extension and, for JSONL, the first row's keys."""
    p = Path(path)
    if p.suffix in (".list", ".txt", ".csv"):
        return "melotts"
    if p.suffix not in (".jsonl", ".json", ".ndjson"):
        raise DataError(f"{p}: cannot tell the manifest format from the extension {p.suffix!r}; "
                        "set data.format to jsonl, melotts or indextts_precomputed")
    with open(p, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return "jsonl"  # the bad line is rejected by the reader
                return "indextts_precomputed" if isinstance(first, dict) and "codes_path" in first else "jsonl"
    return "jsonl"


def iter_manifest(path: str | os.PathLike, fmt: str = "auto") -> Iterator[RawRow]:
    """Yield every non-blank line of `path` as a `RawRow` (lazily; the file is never loaded whole)."""
    path, fmt = check_manifest(path, fmt)
    source = str(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            row = parse_line(raw, lineno, source, fmt, first_in_file=lineno == 1)
            if row is not None:
                yield row


def check_manifest(path: str | os.PathLike, fmt: str) -> tuple[Path, str]:
    """(path, format) after checking that the file exists and resolving `auto`."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a manifest; set data.manifest to the JSONL or .list file "
                        "inside it")
    if not path.is_file():
        raise DataError(f"manifest not found: {path} (set data.manifest, relative to data.root)")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown manifest format {fmt!r}; use one of {', '.join(FORMATS)}")
    return path, fmt


def sniff_manifest(path: str | os.PathLike) -> str | None:
    """What the start of `path` says it is when it is not UTF-8 text: the hint that explains
    why no row could be read, or None when it looks like text."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip():
        return "the file is empty"
    if head[:4] == b"PAR1":
        return "this is a Parquet file, not JSONL; write it out as JSONL (one JSON object per line)"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or (head.count(b"\x00") > len(head) // 4 and b"\x00" in head[:4]):
        return "the file is UTF-16 text; re-save it as UTF-8"
    if head[:2] == b"\x1f\x8b" or head[:4] in (b"PK\x03\x04", b"\x28\xb5\x2f\xfd"):
        return "the file is compressed (gzip, zip or zstd); decompress it first"
    if b"\x00" in head:
        return "the file is binary, not a text manifest"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not a character cut at the end of the sample
            return "the file is not UTF-8 (Latin-1, CP949, ...?); re-save it as UTF-8"
    return None


def parse_line(raw: bytes, lineno: int, source: str, fmt: str, first_in_file: bool = False) -> RawRow | None:
    """One manifest line (with or without its newline) as a `RawRow`; None for a blank line."""
    if first_in_file and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte order mark written by some editors
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        return RawRow(source, lineno, None, Rejection("bad_utf8", f"invalid UTF-8 at byte {e.start}"))
    fields, error = (_parse_melo if fmt == "melotts" else _parse_json)(text)
    return RawRow(source, lineno, fields, error)


# What a block of JSONL lines may not contain for `parse_json_block`: control bytes other than the line breaks
# (Python's json rejects them inside strings), a lone \r (a line break for neither reader), surrogate escapes
# (Python keeps lone ones, Arrow rejects them).
_NOT_FOR_ARROW = re.compile(rb"[\x00-\x09\x0b\x0c\x0e-\x1f]|\r(?!\n|\Z)|\\u[dD][89a-fA-F]")


def is_json_object_line(raw: bytes) -> bool:
    """The line looks like one JSON object (`{` ... `}`): what `parse_json_block` may be given."""
    return raw.lstrip()[:1] == b"{" and raw.rstrip()[-1:] == b"}"


def parse_json_block(lines: list[bytes]) -> pa.Table | None:
    """Parse JSONL lines (each `is_json_object_line`) with Arrow's JSON reader: one row per line.

    Returns None unless every line parses and Arrow's values can equal Python's `json.loads` ones: no
    control bytes, no surrogate escapes, valid UTF-8, one object per line, no key twice (Arrow refuses
    it), no column whose type changes between rows. The caller then parses these lines one by one.
    Numbers equal Python's except integers beyond 2**53 in a float column: callers must not trust those.
    """
    buf = b"\n".join(lines)
    if not lines or _NOT_FOR_ARROW.search(buf):
        return None
    try:
        buf.decode("utf-8")
        table = pa_json.read_json(pa.py_buffer(buf),
                                  read_options=pa_json.ReadOptions(use_threads=False, block_size=len(buf) + 1))
    except (UnicodeDecodeError, pa.ArrowInvalid):
        return None
    return table if table.num_rows == len(lines) else None


def line_ranges(path: str | os.PathLike, chunk_bytes: int) -> list[tuple[int, int]]:
    """Split a file into byte ranges of about `chunk_bytes` that start at line starts (whole lines only)."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + chunk_bytes < size:
            f.seek(bounds[-1] + chunk_bytes - 1)
            f.readline()  # to the end of the line holding the byte before the nominal boundary
            if f.tell() >= size:
                break
            bounds.append(f.tell())
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def count_blank_lines(path: str | os.PathLike) -> int:
    with open(path, "rb") as f:
        return sum(1 for raw in f if not raw.strip())


def _parse_json(text: str) -> tuple[dict | None, Rejection | None]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        return None, Rejection("not_json", f"not JSON: {e}")
    if not isinstance(obj, dict):
        return None, Rejection("not_json", f"a JSON {type(obj).__name__}, not an object")
    return obj, None


def _parse_melo(text: str) -> tuple[dict | None, Rejection | None]:
    parts = text.split("|")
    if len(parts) not in (4, 5):
        return None, Rejection("bad_list_line", f"{len(parts)} '|'-separated fields, expected 4 or 5 "
                                                "(path|speaker|language|text[|emotion])")
    path, speaker, language, text_ = parts[:4]
    fields: dict[str, Any] = {
        "id": os.path.splitext(path.strip())[0],
        "audio_path": path.strip(),
        "speaker": speaker.strip(),
        "language": language.strip(),
        "text": text_,
    }
    if len(parts) == 5 and parts[4].strip():
        fields["emotion"] = parts[4].strip()
    return fields, None


# ----------------------------------------------------------------------------- paths


def resolve_path(value: str, manifest_dir: Path | str, root: Path | str) -> str | None:
    """Absolute, normalised path of `value` (relative = relative to `manifest_dir`); None if it escapes `root`.

    The check is lexical (`..` and absolute paths); symlinks inside the root are followed as the user set them up.
    """
    # string ops, not pathlib: this runs once per row on millions of rows
    p = os.path.normpath(os.path.join(manifest_dir, value))  # joining an absolute value gives the value
    r = os.fspath(root)
    if p != r and not p.startswith(r.rstrip(os.sep) + os.sep):
        return None
    return p


# ----------------------------------------------------------------------------- writing


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write records as JSONL (atomically); returns the row count."""
    lines = [json.dumps(dict(r), ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_melo_list(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write a MeloTTS list `path|speaker|language|text[|emotion]` (atomically); returns the row count.

    Audio paths under the list's folder are written relative to it (the reader resolves them against it),
    others absolute. The emotion column is written for every row when any row has an emotion.
    """
    path = Path(path)
    base = path.parent.resolve()
    rows = list(records)
    with_emotion = any(r.get("emotion") for r in rows)
    lines = []
    for i, r in enumerate(rows):
        audio = Path(os.path.normpath(base / str(r["audio_path"])))
        try:
            audio_s = audio.relative_to(base).as_posix()
        except ValueError:
            audio_s = str(audio)
        cols = [audio_s, str(r["speaker"]), str(r.get("language") or ""), str(r["text"])]
        if with_emotion:
            cols.append(str(r.get("emotion") or ""))
        for name, col in zip(("audio_path", "speaker", "language", "text", "emotion"), cols):
            if "|" in col or "\n" in col or "\r" in col:
                raise DataError(f"{path}: row {i} ({r.get('id')}): {name} contains '|' or a newline, "
                                "which a MeloTTS list cannot hold; clean the text first")
        lines.append("|".join(cols))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
