"""Manifest readers/writers and field validation (no audio decoded, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indextts_ray.data.manifest import (
    Rejection,
    detect_format,
    iter_manifest,
    resolve_path,
    write_jsonl,
    write_melo_list,
)
from indextts_ray.data.validate import (
    REASONS,
    Record,
    RowContext,
    check_fields,
    check_normalised_text,
    check_raw_text,
)
from indextts_ray.errors import DataError
from indextts_ray.model.config import EMOTION_LABELS


def test_jsonl_rows_keep_line_numbers_and_errors(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n\n  \n[1, 2]\n{"id": "b"\n{"t": "\xff"}\n{"id": "c"}\r\n')
    rows = list(iter_manifest(p))
    assert [(r.line, r.fields, r.error.code if r.error else None) for r in rows] == [
        (1, {"id": "a"}, None), (4, None, "not_json"), (5, None, "not_json"), (6, None, "bad_utf8"),
        (7, {"id": "c"}, None)]
    assert all(r.source == str(p) for r in rows)


def test_reader_is_lazy(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"id": "a"}\n')
    it = iter_manifest(p)
    assert next(it).fields == {"id": "a"}
    with open(p, "a") as f:  # a generator reads as it goes
        f.write('{"id": "b"}\n')
    assert next(it).fields == {"id": "b"}


def test_format_detection(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "x", "codes_path": "c.npy"}\n')
    (tmp_path / "b.jsonl").write_text('\n{"id": "x"}\n')
    (tmp_path / "c.list").write_text("a.wav|s|en|hi\n")
    (tmp_path / "d.tsv").write_text("")
    assert detect_format(tmp_path / "a.jsonl") == "indextts_precomputed"
    assert detect_format(tmp_path / "b.jsonl") == "jsonl"
    assert detect_format(tmp_path / "c.list") == "melotts"
    with pytest.raises(DataError, match="data.format"):
        detect_format(tmp_path / "d.tsv")
    with pytest.raises(DataError, match="manifest not found"):
        list(iter_manifest(tmp_path / "missing.jsonl"))


def test_melotts_list_round_trip(tmp_path):
    rows = [
        {"id": "wavs/a", "audio_path": "wavs/a.wav", "speaker": "s1", "language": "KO", "text": "안녕하세요.",
         "emotion": "happy"},
        {"id": "wavs/sub/b", "audio_path": "wavs/sub/b.wav", "speaker": "s2", "language": "EN", "text": "Hi, there!"},
    ]
    p = tmp_path / "train.list"
    assert write_melo_list(rows, p) == 2
    assert p.read_text() == "wavs/a.wav|s1|KO|안녕하세요.|happy\nwavs/sub/b.wav|s2|EN|Hi, there!|\n"
    back = [r.fields for r in iter_manifest(p)]
    assert back == [rows[0], {k: v for k, v in rows[1].items()}]
    # and once more: writing what was read gives the same file
    write_melo_list(back, tmp_path / "again.list")
    assert (tmp_path / "again.list").read_text() == p.read_text()


def test_melotts_bad_lines_and_unwritable_text(tmp_path):
    p = tmp_path / "m.list"
    p.write_text("a.wav|s|en\na.wav|s|en|t|happy|extra\n")
    assert [r.error.code for r in iter_manifest(p)] == ["bad_list_line", "bad_list_line"]
    with pytest.raises(DataError, match="row 0 .*text contains"):
        write_melo_list([{"id": "x", "audio_path": "a.wav", "speaker": "s", "text": "a|b"}], tmp_path / "o.list")


def test_jsonl_write_round_trip(tmp_path):
    rows = [{"id": "a", "text": "한국어", "duration": 1.5}]
    write_jsonl(rows, tmp_path / "o.jsonl")
    assert [r.fields for r in iter_manifest(tmp_path / "o.jsonl")] == rows


def test_paths_resolve_against_manifest_folder_and_stay_in_root(tmp_path):
    root = tmp_path / "root"
    sub = root / "lists"
    assert resolve_path("../wavs/a.wav", sub, root) == str(root / "wavs/a.wav")
    assert resolve_path("a.wav", sub, root) == str(sub / "a.wav")
    assert resolve_path(str(root / "x.wav"), sub, root) == str(root / "x.wav")
    assert resolve_path(".", root, root) == str(root)
    assert resolve_path("../../etc/passwd", sub, root) is None
    assert resolve_path("/etc/passwd", sub, root) is None
    assert resolve_path(str(tmp_path / "rootx/a.wav"), sub, root) is None  # a sibling with the same prefix


def _ctx(tmp_path: Path, fmt: str = "jsonl") -> RowContext:
    return RowContext(tmp_path, tmp_path, list(EMOTION_LABELS), fmt)


def _check(tmp_path, fields: dict, fmt: str = "jsonl"):
    from indextts_ray.data.manifest import RawRow

    return check_fields(RawRow("m.jsonl", 3, fields), _ctx(tmp_path, fmt))


GOOD = {"id": "a", "audio_path": "a.wav", "text": "hi", "speaker": "s", "language": "en", "duration": 1.0}


@pytest.mark.parametrize("change, reason", [
    ({"text": None}, "missing_field"),
    ({"audio_path": " "}, "missing_field"),
    ({"speaker": 1.5}, "bad_field"),
    ({"speaker": True}, "bad_field"),
    ({"text": 5}, "bad_field"),
    ({"duration": "1.0"}, "bad_duration"),
    ({"duration": float("nan")}, "bad_duration"),
    ({"duration": float("inf")}, "bad_duration"),
    ({"duration": -0.5}, "bad_duration"),
    ({"emotion": "ecstatic"}, "unknown_emotion"),
    ({"audio_path": "../a.wav"}, "path_outside_root"),
    ({"prompt_audio_path": "/tmp/../etc/p.wav"}, "path_outside_root"),
])
def test_field_rejections(tmp_path, change, reason):
    got = _check(tmp_path, GOOD | change)
    assert isinstance(got, Rejection) and got.code == reason and reason in REASONS


def test_fields_accepted_and_normalised(tmp_path):
    got = _check(tmp_path, GOOD | {"id": 7, "speaker": 12, "emotion": " Happy ", "language": None,
                                   "duration": 2, "extra_key": 1})
    assert isinstance(got, Record)
    assert (got.id, got.speaker, got.emotion, got.emotion_id, got.language, got.duration) == (
        "7", "12", "happy", 1, "", 2.0)
    assert got.audio_path == str(tmp_path / "a.wav")


def test_precomputed_rows_need_codes_path(tmp_path):
    got = _check(tmp_path, GOOD, fmt="indextts_precomputed")
    assert isinstance(got, Rejection) and got.code == "missing_field" and "codes_path" in got.detail


@pytest.mark.parametrize("text, reason", [
    ("", "empty_text"), (" \t ", "empty_text"), ("a\x00b", "control_chars"), ("a\x1bb", "control_chars"),
])
def test_raw_text_rejections(text, reason):
    assert check_raw_text(text).code == reason


def test_text_checks_accept_speech_and_reject_punctuation():
    assert check_raw_text("line one\nline\ttwo") is None
    assert check_normalised_text("?!... —") .code == "no_speakable_text"
    assert check_normalised_text("사과 세 개") is None and check_normalised_text("42") is None


def test_reasons_are_short_stable_codes():
    assert all(code.isidentifier() and code.islower() and text for code, text in REASONS.items())
    assert json.loads(json.dumps(REASONS)) == REASONS


def test_melotts_manifest_scan_reads_durations_from_headers(tmp_path):
    from indextts_ray.config import load_config
    from indextts_ray.data.metadata import scan_manifest
    from tests.data.tiny_corpus import tone, write_wav

    write_wav(tmp_path / "wavs/a.wav", tone(1.5))
    write_wav(tmp_path / "wavs/b.wav", tone(2.25, sr=16_000), sr=16_000)
    (tmp_path / "wavs/c.wav").write_bytes(b"not audio")
    (tmp_path / "train.list").write_text("wavs/a.wav|s1|KO|안녕하세요|happy\nwavs/b.wav|s1|en|Hi there.|\n"
                                         "wavs/c.wav|s1|en|broken|\nwavs/d.wav|s1|en|missing|\n")
    cfg = load_config(None, [f"data.manifest={tmp_path / 'train.list'}"]).data
    scan = scan_manifest(cfg, list(EMOTION_LABELS))
    assert scan.format == "melotts" and scan.root == tmp_path
    t = scan.table.to_pylist()
    assert [(r["id"], r["language"], r["emotion"], r["duration"]) for r in t] == [
        ("wavs/a", "ko", "happy", 1.5), ("wavs/b", "en", None, 2.25)]
    assert scan.counts["duration_from_header"] == 2
    assert [(r["line"], r["reason"]) for r in scan.rejected] == [(3, "corrupt_audio"), (4, "missing_audio")]
