"""The metadata scan in byte ranges (and on worker processes) gives exactly the single-pass result."""

from __future__ import annotations

import json

import pytest

from indextts_ray.config import load_config
from indextts_ray.data.manifest import line_ranges
from indextts_ray.data.metadata import scan_manifest
from indextts_ray.model.config import EMOTION_LABELS
from tests.data.tiny_corpus import make_messy_corpus


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    manifest, expected, n_rows = make_messy_corpus(root)
    extra = [
        # the first row with an id passed the field checks but was rejected later: a later row is still a duplicate
        {"id": "m_empty_text", "audio_path": "wavs/misc/m6.wav", "text": "hello again", "speaker": "extra",
         "duration": 2.0},
        # the first row with this id failed the field checks: its id is free, this row is accepted
        {"id": "m_missing", "audio_path": "wavs/misc/m1.wav", "text": "hello again", "speaker": "extra",
         "duration": 2.0},
        # a duplicate with bad text as well: reported as the duplicate
        {"id": "x_nolang", "audio_path": "wavs/misc/m1.wav", "text": "   ", "speaker": "extra", "duration": 2.0},
        # durations from the header, counted once per accepted row; an ignored field on a duplicate still counts
        {"id": "h_ok", "audio_path": "wavs/misc/x_stereo.wav", "text": "no duration", "speaker": "extra"},
        {"id": "h_ok", "audio_path": "wavs/misc/x_stereo.wav", "text": "again", "speaker": "extra", "foo": 1},
        {"id": "h_missing", "audio_path": "wavs/misc/nope.wav", "text": "no duration", "speaker": "extra"},
    ]
    with open(manifest, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra) + "\n\n")  # and blank lines at the end
    cfg = load_config(None, [f"data.root={root}", f"data.manifest={manifest.name}"]).data
    return cfg, n_rows + len(extra)


def _result(scan) -> dict:
    return {"table": scan.table, "rejected": scan.rejected, "rows_in": scan.rows_in, "blank": scan.blank_lines,
            "counts": dict(scan.counts), "ignored": scan.ignored_fields, "leftover": dict(scan.leftover_chars)}


def test_single_pass_accounts_for_every_row(messy):
    cfg, n_rows = messy
    scan = scan_manifest(cfg, list(EMOTION_LABELS))
    assert scan.rows_in == n_rows and scan.blank_lines == 3
    assert scan.table.num_rows + len(scan.rejected) == n_rows
    lines = [r["line"] for r in scan.rejected]
    assert lines == sorted(lines)
    last = {(r["id"], r["reason"]) for r in scan.rejected if r["line"] > n_rows - 6 + 1}
    assert last == {("m_empty_text", "duplicate_id"), ("x_nolang", "duplicate_id"), ("h_ok", "duplicate_id"),
                    ("h_missing", "missing_audio")}
    accepted = scan.table.column("id").to_pylist()
    assert accepted.count("m_missing") == 1 and accepted.count("h_ok") == 1
    assert scan.counts["duration_from_header"] == 1 and scan.ignored_fields["foo"] == 1


@pytest.mark.parametrize("chunk_bytes, workers", [(1, 2), (97, 1), (700, 2)])
def test_ranges_give_the_single_pass_result(messy, chunk_bytes, workers):
    """Ranges of one line each, and ranges whose nominal boundaries fall inside lines (bad ones included)."""
    cfg, _ = messy
    single = _result(scan_manifest(cfg, list(EMOTION_LABELS)))
    chunked = _result(scan_manifest(cfg.model_copy(update={"scan_workers": workers}), list(EMOTION_LABELS),
                                    chunk_bytes=chunk_bytes))
    assert chunked.pop("table").equals(single.pop("table"))
    assert chunked == single


def test_line_ranges_are_whole_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    data = b'{"a": 1}\n\n{"b": "\xff"}\nno newline at the end'
    p.write_bytes(data)
    starts = {0} | {i + 1 for i, c in enumerate(data) if c == ord("\n")}
    for chunk_bytes in (1, 2, 9, 10, 11, 25, 1000):
        ranges = line_ranges(p, chunk_bytes)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start in starts and start < end for start, end in ranges)
    assert line_ranges(p, 1) == [(0, 9), (9, 10), (10, 21), (21, len(data))]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert line_ranges(tmp_path / "empty.jsonl", 10) == [(0, 0)]


def test_arrow_blocks_give_the_line_by_line_result(messy, monkeypatch):
    """The vectorised JSON path (Arrow parse + block field checks) changes nothing: same as `check_fields` alone."""
    from indextts_ray.data import metadata

    cfg, _ = messy
    fast = _result(scan_manifest(cfg, list(EMOTION_LABELS)))
    monkeypatch.setattr(metadata, "parse_json_block", lambda lines: None)
    slow = _result(scan_manifest(cfg, list(EMOTION_LABELS)))
    assert fast.pop("table").equals(slow.pop("table"))
    assert fast == slow


# lines where Arrow's JSON reader and Python's json could disagree, or where the block checks must step aside
TRICKY = [
    '{"id": "a", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": 1.5}',
    '{"id": 7, "audio_path": "w/a.wav", "text": "hi", "speaker": 12, "duration": 2}',
    '{"id": "b", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": NaN}',
    '{"id": "c", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": Infinity}',
    '{"id": "d", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": 123456789012345678901234}',
    '{"id": "e", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": -0.0}',
    '{"id": "f", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": 0}',
    '{"id": "g", "audio_path": "./w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "h", "audio_path": "../a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "i", "audio_path": "/abs/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "j", "audio_path": "w//a.wav", "text": "hi", "speaker": "s", "prompt_audio_path": ""}',
    '{"id": " k", "audio_path": "w/a.wav ", "text": " ", "speaker": "s\\u3000", "language": " en"}',
    '{"id": "l", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "emotion": " Happy "}',
    '{"id": "m", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "emotion": "happy", "extra": 1}',
    '{"id": "n", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "emotion": ""}',
    '{"id": "o", "audio_path": "w/a.wav", "text": null, "speaker": "s"}',
    '{"id": "p", "id": "q", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "r", "audio_path": "w/a.wav", "text": "tab\there", "speaker": "s"}',
    '{"id": "s", "audio_path": "w/a.wav", "text": "\\ud800", "speaker": "s"}',
    '{"id": "t", "audio_path": "w/a.wav", "text": "hi", "speaker": true}',
    '{"id": "u", "audio_path": "w/a.wav", "text": 5, "speaker": "s"}',
    '{"id": "v", "audio_path": "w/a.wav", "text": "hi", "speaker": "s", "duration": "1.0"}',
    '{"id": "w", "audio_path": "w/a.wav", "text": "\\u00e9t\\u00e9 \\"q\\" \\\\ /", "speaker": "s"}',
    '{"a": 1} {"b": 2}',
    '{"id": "x"} null',
    'null',
    '[1, 2]',
    '{"id": "y", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}\r',
    '{}',
    # ids that cannot be file names (bad_id) and near misses that can
    '{"id": "a/b", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "a\\\\b", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "..", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": ".hidden", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "a\\u0085b", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "a\\u007fb", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "a..b", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "' + "가" * 86 + '", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
    '{"id": "' + "x" * 255 + '", "audio_path": "w/a.wav", "text": "hi", "speaker": "s"}',
]


def test_block_field_checks_agree_with_check_fields(tmp_path):
    """Every Record the block checks give equals `check_fields`' one; all other rows are left to it."""
    import random

    from indextts_ray.data.manifest import is_json_object_line, parse_json_block, parse_line
    from indextts_ray.data.validate import Record, RowContext, check_fields, check_fields_block

    rng = random.Random(0)
    for trial in range(60):
        lines = [rng.choice(TRICKY).encode() for _ in range(rng.randint(1, 8))]
        objects = [raw for raw in lines if is_json_object_line(raw)]
        if any(raw.strip() == b"null" for raw in objects):
            raise AssertionError("a bare null must never reach Arrow (it crashes the reader)")
        table = parse_json_block(objects)
        fast_ctx = RowContext(tmp_path, tmp_path, list(EMOTION_LABELS), "jsonl")
        slow_ctx = RowContext(tmp_path, tmp_path, list(EMOTION_LABELS), "jsonl")
        records = None if table is None else check_fields_block(table, list(range(len(objects))), "m", fast_ctx)
        for k, raw in enumerate(objects):
            expected = check_fields(parse_line(raw, k, "m", "jsonl"), slow_ctx)
            got = records[k] if records is not None else None
            if got is None:
                check_fields(parse_line(raw, k, "m", "jsonl"), fast_ctx)  # what the scan does with the row
            else:
                assert isinstance(expected, Record) and got == expected, (trial, raw)
        assert fast_ctx.ignored_fields == slow_ctx.ignored_fields


def test_python_whitespace_list_is_complete():
    import sys

    from indextts_ray.data.validate import PY_WHITESPACE

    assert PY_WHITESPACE == "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
