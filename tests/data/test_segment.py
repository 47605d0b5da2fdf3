"""Segmentation of synthetic long recordings whose speech edges and pauses are known exactly."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from indextts_ray.cli import main
from indextts_ray.data.segment import (
    SegmentParams,
    find_speech,
    frame_levels,
    plan_segments,
    segment_recordings,
)
from indextts_ray.data.synth import make_corpus, make_long_recording, make_voices
from indextts_ray.errors import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two ~45 s recordings under long/<speaker>/<emotion>/ (neutral/ko and happy/en) + their truth."""
    return make_corpus(tmp_path_factory.mktemp("seg") / "c", n_speakers=2, utts_per_speaker=0).parent


def _truth(corpus: Path) -> dict[str, dict]:
    return {Path(r["audio_path"]).relative_to("long").as_posix(): r
            for r in json.loads((corpus / "long_recordings.json").read_text())}


@pytest.mark.parametrize("emotion", ["depressed", "angry"])  # the quietest and the loudest delivery
def test_speech_edges_within_50ms(tmp_path, emotion):
    y, truth = make_long_recording(7, make_voices(4, 0)[3], emotion, "en", 24000)
    sf.write(tmp_path / "x.wav", y, 24000, subtype="PCM_16")
    levels, sr, n, _ = frame_levels(tmp_path / "x.wav")
    found = [[a * 0.01, b * 0.01] for a, b in find_speech(levels, SegmentParams())]
    assert len(found) == len(truth["speech"]) == 5
    assert np.abs(np.array(found) - np.array(truth["speech"])).max() < 0.05


def test_split_at_known_pause_and_merge_short(corpus):
    for rel, rec in _truth(corpus).items():
        levels, *_ = frame_levels(corpus / "long" / rel)
        plan, d = plan_segments(levels, SegmentParams())
        speech = np.array(rec["speech"])
        lengths = speech[:, 1] - speech[:, 0]
        assert d.split == 1 and d.merged == 1 and not d.dropped and not d.forced_splits
        segs = np.array(plan) * 0.01
        assert len(segs) == 5  # 5 chunks: the long one split in two, the short one merged
        (sa, sb), = rec["split_pauses"]
        cut = [i for i in range(4) if abs(segs[i, 1] - sa) < 0.05 and abs(segs[i + 1, 0] - sb) < 0.05]
        assert len(cut) == 1, (segs, rec["split_pauses"])
        # the short chunk went to the neighbour across the shorter pause
        k = int(np.argmin(lengths))
        gaps = [(speech[k, 0] - speech[k - 1, 1], k - 1) if k > 0 else (np.inf, -1),
                (speech[k + 1, 0] - speech[k, 1], k + 1) if k < 4 else (np.inf, -1)]
        j = min(gaps)[1]
        lo, hi = min(j, k), max(j, k)
        assert any(abs(a - speech[lo, 0]) < 0.05 and abs(b - speech[hi, 1]) < 0.05 for a, b in segs)


def test_segment_folder_writes_everything(corpus, tmp_path):
    out = tmp_path / "out"
    log = segment_recordings(corpus / "long", out, language="ko", progress=False)
    t = log["totals"]
    assert t == {**t, "files": 2, "files_failed": 0, "segments": 10, "split": 2, "merged": 2, "forced_splits": 0,
                 "dropped_short": 0, "downmixed_files": 0}
    assert t["train"] + t["val"] == 10 and t["val"] >= 1
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    truth = _truth(corpus)
    for r in rows:
        info = sf.info(out / r["audio_path"])
        assert 3.0 <= info.frames / info.samplerate <= 15.0
        assert abs(info.frames / info.samplerate - r["duration"]) < 1e-5
        rec = truth[r["source"]]
        assert r["speaker"] == rec["speaker"] and r["emotion"] == rec["emotion"] and r["language"] == "ko"
        assert r["source_start"] <= r["speech_start"] < r["speech_end"] <= r["source_end"]
    # every known speech chunk is inside exactly one segment, except the long one, cut at its split pause
    for src, rec in truth.items():
        mine = [r for r in rows if r["source"] == src]
        (sa, sb), = rec["split_pauses"]
        for a, b in rec["speech"]:
            inside = sum(r["speech_start"] - 0.05 <= a and b <= r["speech_end"] + 0.05 for r in mine)
            if a < sa < b:
                assert inside == 0 and sum(a - 0.05 <= r["speech_start"] and r["speech_end"] <= b + 0.05
                                           for r in mine) == 2
            else:
                assert inside == 1
    melo = (out / "metadata.list").read_text().splitlines()
    assert len(melo) == 10 and melo[0].split("|")[1:3] == [rows[0]["speaker"], "ko"]
    assert melo[0].split("|")[4] == rows[0]["emotion"]
    n_train = len((out / "train.list").read_text().splitlines())
    assert n_train == t["train"] and n_train + len((out / "val.list").read_text().splitlines()) == 10
    assert json.loads((out / "conversion_log.json").read_text())["totals"] == t


def test_csv_labels_stereo_and_resample(corpus, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (rel, rec), = list(_truth(corpus).items())[:1]
    y, sr = sf.read(corpus / "long" / rel)
    sf.write(src / "rec.flac", np.stack([y, y], 1), sr)  # stereo
    (tmp_path / "labels.csv").write_text("file,emotion,speaker,language\nrec.flac,Sad,anna,en\n")
    log = segment_recordings(src, tmp_path / "out", labels_csv=tmp_path / "labels.csv", emotions_from="csv",
                             sample_rate=16000, progress=False)
    assert log["totals"]["downmixed_files"] == 1 and log["totals"]["segments"] == 5
    rows = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert {(r["speaker"], r["emotion"], r["language"]) for r in rows} == {("anna", "sad", "en")}
    assert all(sf.info(tmp_path / "out" / r["audio_path"]).samplerate == 16000 for r in rows)


def test_labelling_errors(corpus, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (rel, _), = list(_truth(corpus).items())[:1]
    (flat / "a.wav").write_bytes((corpus / "long" / rel).read_bytes())
    with pytest.raises(DataError, match="no emotion folder"):
        segment_recordings(flat, tmp_path / "o", speaker="x", language="ko", progress=False)
    with pytest.raises(DataError, match="no speaker"):
        segment_recordings(flat, tmp_path / "o", language="ko", emotions_from="none", progress=False)
    (tmp_path / "l.csv").write_text("file,emotion\nother.wav,happy\n")
    with pytest.raises(DataError, match="1 audio files have no row"):
        segment_recordings(flat, tmp_path / "o", labels_csv=tmp_path / "l.csv", emotions_from="csv", progress=False)
    with pytest.raises(DataError, match="max_len"):
        SegmentParams(min_len=8.0, max_len=15.0)


def test_cli_segment(corpus, tmp_path, capsys):
    assert main(["segment", str(corpus / "long"), "--out", str(tmp_path / "o"), "--language", "en",
                 "--no-progress"]) == 0
    assert "2 files" in capsys.readouterr().out and (tmp_path / "o/val.list").exists()
    assert main(["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2


@pytest.mark.parametrize("kind", ["corrupt", "empty_file", "text", "mixed"])
def test_no_readable_input_exits_2_with_the_count(tmp_path, capsys, kind):
    """Whatever makes every file unreadable (garbage, zero bytes, a text file named .wav), segment fails with the
    count instead of succeeding with empty lists."""
    src = tmp_path / "in" / "spk"
    src.mkdir(parents=True)
    contents = {"corrupt": b"RIFF\x00\x00\x00\x00WAVEfmt garbage", "empty_file": b"", "text": b"hello\n" * 50}
    for i, k in enumerate(contents if kind == "mixed" else [kind]):
        (src / f"{k}{i}.wav").write_bytes(contents[k])
        (src / f"{k}{i}.flac").write_bytes(contents[k])
    n = len(list(src.iterdir()))
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--language", "ko",
                 "--emotions-from", "none", "--speaker", "x", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"none of the {n} audio files could be read ({n} unreadable" in err
    assert not (tmp_path / "o/manifest.jsonl").exists()
    assert len(json.loads((tmp_path / "o/conversion_log.json").read_text())["failed"]) == n
