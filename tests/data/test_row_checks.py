"""Row checks found by trying a new corpus (issue 20): symlinks out of the root, ids that cannot be file names,
unknown languages, clipping as flat tops."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from indextts_ray.config import load_config
from indextts_ray.data import metadata
from indextts_ray.data.manifest import RawRow, Rejection
from indextts_ray.data.metadata import scan_manifest
from indextts_ray.data.validate import REASONS, Record, RowContext, check_audio, check_fields
from indextts_ray.model.config import EMOTION_LABELS
from tests.data.tiny_corpus import SR, tone, write_wav


def _scan(tmp_path: Path, rows: list[dict], *overrides: str, root: Path | None = None):
    manifest = (root or tmp_path) / "m.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [f"data.root={root or tmp_path}", "data.manifest=m.jsonl", "data.scan_workers=1",
                             *overrides]).data
    scan = scan_manifest(cfg, list(EMOTION_LABELS))
    assert scan.rows_in == len(rows) == scan.table.num_rows + len(scan.rejected)
    return {r["id"]: None for r in scan.table.to_pylist()} | {r["id"]: r["reason"] for r in scan.rejected}


def _row(rid: str, audio: str = "w/a.wav", **kw) -> dict:
    return {"id": rid, "audio_path": audio, "text": "hello there", "speaker": "s", "language": "en"} | kw


# ----------------------------------------------------------------------------- symlinks


def test_symlinks_out_of_the_root_are_rejected_before_anything_opens_them(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_wav(root / "w/a.wav", tone(1.0))
    write_wav(outside / "good.wav", tone(1.0))
    (outside / "secret.txt").write_text("root:x:0:0")
    (root / "w/to_wav.wav").symlink_to(outside / "good.wav")  # a valid wav outside: still outside
    (root / "w/to_text.wav").symlink_to(outside / "secret.txt")  # /etc/passwd-like
    (root / "w/dangling.wav").symlink_to(outside / "gone.wav")  # broken, pointing out
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)  # a folder on the way
    (root / "w/inside.wav").symlink_to(root / "w/a.wav")  # inside the root: followed as set up
    (root / "w/chain.wav").symlink_to(root / "w/to_wav.wav")  # inside, then out
    opened: list[str] = []
    real_header = metadata.header_duration
    monkeypatch.setattr(metadata, "header_duration", lambda p: opened.append(p) or real_header(p))

    got = _scan(tmp_path, [
        _row("plain"), _row("inside", "w/inside.wav"),
        _row("to_wav", "w/to_wav.wav"), _row("to_text", "w/to_text.wav"), _row("dangling", "w/dangling.wav"),
        _row("via_dir", "linked_dir/good.wav"), _row("chain", "w/chain.wav"),
        _row("prompt_out", prompt_audio_path="w/to_wav.wav"), _row("emotion_out", emotion_audio_path="w/chain.wav"),
        _row("missing_inside", "w/nope.wav"),
    ], root=root)
    outside_ids = ("to_wav", "to_text", "dangling", "via_dir", "chain", "prompt_out", "emotion_out")
    assert got == {"plain": None, "inside": None, "missing_inside": "missing_audio"} | dict.fromkeys(
        outside_ids, "path_outside_root")
    assert all(os.path.realpath(p).startswith(str(root) + os.sep) for p in opened)  # nothing outside was read


def test_a_symlinked_root_is_not_outside_itself(tmp_path):
    real = tmp_path / "real"
    write_wav(real / "w/a.wav", tone(1.0))
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert _scan(tmp_path, [_row("a")], root=tmp_path / "alias") == {"a": None}


# ----------------------------------------------------------------------------- ids

BAD_IDS = ["a/b", "/abs", "a\\b", "..", ".", ".hidden", "../../x", "a\x00b", "a\nb", "a\tb", "a\x1bb", "a\x7fb",
           "a\x85b", "x" * 256, "가" * 86]
GOOD_IDS = ["a", "a..b", "a.b.", "x" * 255, "가" * 85, "한국어_001-A", "spk 1 utt 2", 7]


@pytest.mark.parametrize("rid", BAD_IDS)
def test_ids_that_cannot_be_file_names_are_rejected(tmp_path, rid):
    got = check_fields(RawRow("m.jsonl", 1, _row(rid)), RowContext(tmp_path, tmp_path, list(EMOTION_LABELS), "jsonl"))
    assert isinstance(got, Rejection) and got.code == "bad_id" and "bad_id" in REASONS


@pytest.mark.parametrize("rid", GOOD_IDS)
def test_ids_usable_as_file_names_are_kept(tmp_path, rid):
    got = check_fields(RawRow("m.jsonl", 1, _row(rid)), RowContext(tmp_path, tmp_path, list(EMOTION_LABELS), "jsonl"))
    assert isinstance(got, Record) and got.id == str(rid)


def test_scan_rejects_bad_ids_on_the_block_path_too(tmp_path):
    write_wav(tmp_path / "w/a.wav", tone(1.0))
    rows = [_row(rid) for rid in BAD_IDS] + [_row(rid) for rid in GOOD_IDS]
    assert _scan(tmp_path, rows) == dict.fromkeys(BAD_IDS, "bad_id") | {str(r): None for r in GOOD_IDS}


def test_melotts_ids_are_paths_relative_to_the_root(tmp_path):
    """A list has no id: it is the audio path under the root, never `..` or an absolute path."""
    write_wav(tmp_path / "wavs/a.wav", tone(1.0))
    write_wav(tmp_path / "wavs/sub/b.wav", tone(1.0))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/train.list").write_text(f"../wavs/a.wav|s|en|hi there\n{tmp_path}/wavs/sub/b.wav|s|en|hi\n"
                                               "../wavs/bad\x07.wav|s|en|hi\n")
    cfg = load_config(None, [f"data.root={tmp_path}", "data.manifest=lists/train.list", "data.scan_workers=1"]).data
    scan = scan_manifest(cfg, list(EMOTION_LABELS))
    assert scan.table.column("id").to_pylist() == ["wavs/a", "wavs/sub/b"]
    assert [r["reason"] for r in scan.rejected] == ["bad_id"]


# ----------------------------------------------------------------------------- languages


def test_languages_the_front_end_does_not_know_are_rejected(tmp_path):
    write_wav(tmp_path / "w/a.wav", tone(1.0))
    hangul, han = "안녕하세요 여러분", "你好世界"
    rows = [_row("en"), _row("EN-us", language="EN-us"), _row("ko", language="Korean", text=hangul),
            _row("zh", language="zh-CN", text=han), _row("fr", language="fr"), _row("xx", language="xx"),
            _row("klingon", language="klingon"), _row("ja", language="ja", text="こんにちは"),
            _row("detected_ko", language=None, text=hangul), _row("detected_ja", language=None, text="こんにちは"),
            _row("detected_none", language=None, text="123 456")]
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    bad = {"fr", "xx", "klingon", "ja", "detected_ja", "detected_none"}
    assert _scan(tmp_path, rows) == {r["id"]: "unknown_language" if r["id"] in bad else None for r in rows}
    # a configured list replaces the default one (and may hold languages without rules)
    got = _scan(tmp_path, rows, "data.languages=[ko, fr]")
    assert {k for k, v in got.items() if v is None} == {"ko", "fr", "detected_ko"}
    assert set(got.values()) == {None, "unknown_language"}


# ----------------------------------------------------------------------------- clipping


def _loud_vowel(seconds: float, sr: int, f0: float, noise: float) -> np.ndarray:
    """A sustained shouted vowel (harmonics with vibrato, a little mic noise) peak-normalised to full scale:
    every period's peak comes close to 1.0."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 8)) + noise * np.random.default_rng(0).standard_normal(t.size)
    return (y / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("sr", [16_000, 24_000, 48_000])
@pytest.mark.parametrize("f0", [80.0, 140.0, 260.0])
@pytest.mark.parametrize("noise", [0.0, 3e-4])
def test_loud_clean_speech_is_kept_and_flat_tops_are_clipping(tmp_path, sr, f0, noise):
    """Loud speech at full scale, as float and as PCM16 on disk: kept. The same driven 2x into the rails: clipped."""
    cfg = load_config(None).data
    loud = _loud_vowel(1.0, sr, f0, noise)
    hard = np.clip(2.0 * loud, -1.0, 1.0)
    for name, wav, expect in [("loud", loud, None), ("hard", hard, "clipped")]:
        sf.write(tmp_path / f"{name}.wav", wav, sr, subtype="PCM_16")
        on_disk, _ = sf.read(tmp_path / f"{name}.wav", dtype="float32")
        for signal in (wav, on_disk):
            # what the old rule (any sample at full scale) counted: it rejected the loud one too
            assert float(np.mean(np.abs(signal) >= cfg.clip_level)) > cfg.max_clip_fraction
            got = check_audio(signal, sr, cfg.silence_dbfs, cfg.clip_level, cfg.max_clip_fraction, cfg.clip_run)
            assert (got.code if got else None) == expect, (name, sr, f0)


def test_single_full_scale_peaks_are_not_clipping_but_runs_are():
    base = (0.3 * np.sin(np.arange(SR) / 7.0)).astype(np.float32)
    spikes = base.copy()
    spikes[::200] = 1.0  # 0.5 % single full-scale samples
    runs = base.copy()
    for start in range(0, SR, 400):
        runs[start: start + 3] = 1.0  # the same share in flat runs of 3
    kw = {"sr": SR, "silence_dbfs": -60.0, "clip_level": 0.999, "max_clip_fraction": 0.001, "clip_run": 3}
    assert check_audio(spikes, **kw) is None
    assert check_audio(runs, **kw).code == "clipped"
    assert check_audio(spikes, **kw | {"clip_run": 1}).code == "clipped"  # clip_run 1: any full-scale sample
