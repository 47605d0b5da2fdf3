"""The synthetic corpus is deterministic and its speakers/emotions/texts are measurably distinct."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from indextts_ray.cli import main
from indextts_ray.data.synth import EMOTION_PROSODY, EMOTIONS, make_corpus, make_voices, text_to_segs


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def _median_f0(y: np.ndarray, sr: int) -> float:
    """Autocorrelation f0 over loud 40 ms frames (independent of the synthesiser's own f0 track)."""
    hop, win, out = sr // 100, sr // 25, []
    lo, hi = sr // 400, sr // 70
    for s in range(0, len(y) - win, hop):
        fr = y[s:s + win] - y[s:s + win].mean()
        if np.sqrt(np.mean(fr**2)) < 0.03:
            continue
        ac = np.correlate(fr, fr, "full")[win - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            out.append(sr / lag)
    return float(np.median(out))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("synth") / "c", n_speakers=4, utts_per_speaker=7, n_long_recordings=1)


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    again = make_corpus(tmp_path / "again", n_speakers=4, utts_per_speaker=7, n_long_recordings=1)
    assert _digest(again.parent) == _digest(corpus.parent)
    other = make_corpus(tmp_path / "other", n_speakers=1, utts_per_speaker=2, n_long_recordings=0, seed=1)
    first = _rows(corpus)[:2]
    assert [r["text"] for r in _rows(other)] != [r["text"] for r in first]


def test_manifest_rows_match_audio(corpus):
    rows = _rows(corpus)
    assert len(rows) == 28 and len({r["id"] for r in rows}) == 28
    assert {r["emotion"] for r in rows} == set(EMOTIONS) == set(EMOTION_PROSODY)
    assert {r["language"] for r in rows} == {"ko", "en"}
    for r in rows:
        assert set(r) == {"id", "audio_path", "text", "speaker", "language", "duration", "emotion"}
        info = sf.info(corpus.parent / r["audio_path"])
        assert not Path(r["audio_path"]).is_absolute()
        assert info.samplerate == 24000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(info.frames / 24000 - r["duration"]) < 1e-5
        assert 1.0 < r["duration"] < 12.0
        if r["language"] == "ko":
            assert any("\uac00" <= ch <= "\ud7a3" for ch in r["text"])
        else:
            assert r["text"].isascii()


def test_speakers_have_distinct_mean_f0(corpus):
    rows = _rows(corpus)
    f0 = {}
    for r in rows:
        if r["emotion"] == "neutral":  # same prosody, so only the voice differs
            y, sr = sf.read(corpus.parent / r["audio_path"])
            f0[r["speaker"]] = _median_f0(y, sr)
    designed = [v.f0 for v in make_voices(4, 0)]
    measured = [f0[f"spk{i:02d}"] for i in range(4)]
    assert np.all(np.diff(measured) > 15), measured  # strictly increasing, by > 15 Hz
    assert np.allclose(measured, designed, rtol=0.12), (measured, designed)


def test_emotions_change_f0_energy_and_rate(corpus):
    rows = [r for r in _rows(corpus) if r["speaker"] == "spk02"]  # one speaker, 7 emotions
    assert sorted(r["emotion"] for r in rows) == sorted(EMOTIONS)
    f0, level, sec_per_segment = {}, {}, {}
    for r in rows:
        y, sr = sf.read(corpus.parent / r["audio_path"])
        f0[r["emotion"]] = _median_f0(y, sr)
        loud = y[np.abs(y) > 0.01]
        level[r["emotion"]] = 20 * np.log10(np.sqrt(np.mean(loud**2)))
        sec_per_segment[r["emotion"]] = (r["duration"] - 0.4) / sum(s.dur for s in text_to_segs(r["text"], r["language"]))
    emotions = list(f0)
    corr = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    assert corr([f0[e] for e in emotions], [EMOTION_PROSODY[e].f0_scale for e in emotions]) > 0.9
    assert corr([level[e] for e in emotions], [20 * np.log10(EMOTION_PROSODY[e].energy) for e in emotions]) > 0.9
    assert corr([sec_per_segment[e] for e in emotions], [1 / EMOTION_PROSODY[e].rate for e in emotions]) > 0.99


def test_longer_text_longer_audio(corpus):
    rows = _rows(corpus)
    nominal = [sum(s.dur for s in text_to_segs(r["text"], r["language"])) for r in rows]
    assert np.corrcoef(nominal, [r["duration"] for r in rows])[0, 1] > 0.8


def test_long_recording_truth(corpus):
    (rec,) = json.loads((corpus.parent / "long_recordings.json").read_text())
    y, sr = sf.read(corpus.parent / rec["audio_path"])
    assert abs(len(y) / sr - rec["duration"]) < 1e-5
    speech, pauses = rec["speech"], rec["pauses"]
    assert len(speech) == 5 and len(pauses) == 4 and len(rec["split_pauses"]) == 1
    assert all(b - a >= 1.2 - 1e-3 for a, b in pauses)
    lengths = sorted(b - a for a, b in speech)
    assert lengths[0] < 3.0 and lengths[-1] > 15.0  # one to merge, one to split
    for a, b in pauses:  # the pauses hold only the noise floor
        assert np.sqrt(np.mean(y[int(a * sr) + 240:int(b * sr) - 240] ** 2)) < 10 ** (-55 / 20)
    for a, b in speech:  # and each chunk really starts/ends loud
        for t in (a, b - 0.01):
            seg = y[int(t * sr):int(t * sr) + 240]
            assert np.sqrt(np.mean(seg**2)) > 10 ** (-45 / 20)


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--speakers", "2", "--utts", "1", "--long", "0",
                 "--languages", "en"]) == 0
    assert "2 utterances" in capsys.readouterr().out
    assert [r["language"] for r in _rows(tmp_path / "s/manifest.jsonl")] == ["en", "en"]
    assert main(["synth", "--out", str(tmp_path / "x"), "--emotions", "joyful"]) == 2
