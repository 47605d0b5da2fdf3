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
