"""Tiny corpora for the data tests: the synthetic speech corpus plus one row per way a row can go wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from indextts_ray.data.synth import make_corpus

SR = 24_000


def tone(seconds: float, sr: int = SR, f0: float = 140.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A voiced-speech-like signal: harmonics under a slow syllable envelope plus a little noise (-20 dBFS-ish)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 12))
    y = 0.12 * y * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t) ** 2) + 0.003 * rng.standard_normal(t.size)
    y = y.astype(np.float32)
    return np.stack([y, 0.8 * y], axis=1) if channels == 2 else y


def write_wav(path: Path, y: np.ndarray, sr: int = SR) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y, sr, subtype="PCM_16" if y.size == 0 or np.abs(y).max() < 1.0 else "FLOAT")
    return path.name


def make_good_corpus(root: Path, speakers: int = 3, utts: int = 6) -> list[dict]:
    """Synthetic speech (distinct voices, ko + en) under `root`; returns its manifest rows."""
    manifest = make_corpus(root, n_speakers=speakers, utts_per_speaker=utts, n_long_recordings=0, seed=0)
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def make_messy_corpus(root: Path) -> tuple[Path, dict[str, str], int]:
    """Good rows + one row per rejection reason + rows that are fixed and counted.

    Returns (manifest path, {row id: expected reason}, number of manifest rows). Rows without an id
    (unparsable lines) are keyed by `line:N`.
    """
    rows: list[dict | bytes | str] = list(make_good_corpus(root))
    w = root / "wavs" / "misc"
    expected: dict[str, str] = {}

    def good(name: str, seconds: float = 2.0, sr: int = SR, channels: int = 1, seed: int = 0) -> str:
        write_wav(w / f"{name}.wav", tone(seconds, sr, channels=channels, seed=seed), sr)
        return f"wavs/misc/{name}.wav"

    def row(rid: str, audio: str, speaker: str = "extra", duration: float | str | None = 2.0, **kw) -> dict:
        r = {"id": rid, "audio_path": audio, "text": f"hello world number {rid}", "speaker": speaker,
             "language": "en", "duration": duration, **kw}
        return {k: v for k, v in r.items() if v is not None}

    # accepted rows, fixed and counted: another sample rate, stereo, no language; own prompt/emotion audio
    rows.append(row("x_resampled", good("x_resampled", sr=22_050, seed=1)))
    rows.append(row("x_stereo", good("x_stereo", channels=2, seed=2)) | {"text": "I have 3 apples"})  # normalised
    rows.append({k: v for k, v in row("x_nolang", good("x_nolang", seed=3)).items() if k != "language"})
    rows.append(row("x_prompted", good("x_prompted", seed=4), prompt_audio_path=good("p_ref", 3.0, seed=5),
                    emotion_audio_path=good("e_ref", 2.5, seed=6), emotion="happy"))
    # metadata rejections
    by_index: dict[int, str] = {}  # rows without a usable id, by position; turned into line numbers below
    rows.append(b'{"id": "bad_utf8", "text": "\xff\xfe"}')
    by_index[len(rows) - 1] = "bad_utf8"
    rows.append('{"id": "not json"')
    by_index[len(rows) - 1] = "not_json"
    for rid, reason, r in [
        ("x_resampled", "duplicate_id", row("x_resampled", good("x_dup", seed=7))),
        ("m_missing", "missing_field", {k: v for k, v in row("m_missing", good("m1")).items() if k != "text"}),
        ("m_badfield", "bad_field", row("m_badfield", good("m2"), speaker=None) | {"speaker": ["a"]}),
        ("m_dur_text", "bad_duration", row("m_dur_text", good("m3"), duration="long")),
        ("m_dur_neg", "bad_duration", row("m_dur_neg", good("m4"), duration=-1.0)),
        ("m_emotion", "unknown_emotion", row("m_emotion", good("m5"), emotion="ecstatic")),
        ("m_escape", "path_outside_root", row("m_escape", "../../outside.wav")),
        ("m_empty_text", "empty_text", row("m_empty_text", good("m6")) | {"text": "   "}),
        ("m_control", "control_chars", row("m_control", good("m7")) | {"text": "hello\x07 there"}),
        ("m_punct", "no_speakable_text", row("m_punct", good("m8")) | {"text": "?! ... --"}),
        ("m_long_text", "text_too_long", row("m_long_text", good("m9")) | {"text": " ".join(["speech"] * 400)}),
        ("m_missing_audio", "missing_audio", row("m_missing_audio", "wavs/misc/nope.wav")),
        ("m_too_short", "too_short", row("m_too_short", good("m10"), duration=0.1)),
        ("m_too_long", "too_long", row("m_too_long", good("m11"), duration=99.0)),
    ]:
        rows.append(r)
        if reason == "duplicate_id":
            by_index[len(rows) - 1] = reason
        else:
            expected[rid] = reason
    rows.append('{"id": "m_nan", "audio_path": "wavs/misc/m1.wav", "text": "hi", "speaker": "s", "duration": NaN}')
    expected["m_nan"] = "bad_duration"

    # audio rejections (speaker "bad" has many rows, so pairing keeps them until their audio is read)
    (w / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    write_wav(w / "empty.wav", np.zeros(0, dtype=np.float32))
    write_wav(w / "silent.wav", np.zeros(2 * SR, dtype=np.float32))
    square = np.sign(np.sin(2 * np.pi * 200 * np.arange(2 * SR) / SR)).astype(np.float32)
    write_wav(w / "clipped.wav", square)
    for rid, reason, r in [
        ("a_corrupt", "corrupt_audio", row("a_corrupt", "wavs/misc/corrupt.wav", "bad")),
        ("a_empty", "empty_audio", row("a_empty", "wavs/misc/empty.wav", "bad", duration=1.0)),
        ("a_lowrate", "low_sample_rate", row("a_lowrate", good("a_lowrate", sr=8000), "bad")),
        ("a_mismatch", "duration_mismatch", row("a_mismatch", good("a_mismatch"), "bad", duration=5.0)),
        ("a_silent", "silent", row("a_silent", "wavs/misc/silent.wav", "bad")),
        ("a_clipped", "clipped", row("a_clipped", "wavs/misc/clipped.wav", "bad")),
        ("a_many_codes", "too_many_codes", row("a_many_codes", good("a_many_codes", 9.0), "bad", duration=9.0)),
        ("a_bad_prompt", "bad_prompt_audio",
         row("a_bad_prompt", good("a_bad_prompt"), "bad", prompt_audio_path="wavs/misc/corrupt.wav")),
        # a speaker whose only other utterance is silent: that one is rejected, p_fragile is kept (prompts are
        # drawn at training time among accepted utterances; prepare reports single-utterance speakers)
        ("p_fragile_silent", "silent", row("p_fragile_silent", "wavs/misc/silent.wav", "fragile")),
    ]:
        rows.append(r)
        expected[rid] = reason
    rows.append(row("p_lonely", good("p_lonely"), "lonely"))  # alone in the manifest: kept, reported
    rows.append(row("p_fragile", good("p_fragile"), "fragile"))
    if os.geteuid() != 0:  # root reads any file: the permission check cannot be exercised as root
        good("a_noperm")
        os.chmod(w / "a_noperm.wav", 0)
        rows.append(row("a_noperm", "wavs/misc/a_noperm.wav", "bad"))
        expected["a_noperm"] = "unreadable_audio"

    manifest = root / "messy.jsonl"
    line = 0
    with open(manifest, "wb") as f:
        for i, r in enumerate(rows):
            if isinstance(r, dict):
                f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
            else:
                f.write((r if isinstance(r, bytes) else r.encode()) + b"\n")
            line += 1
            if i in by_index:
                expected[f"line:{line}"] = by_index[i]
            if i == 5:
                f.write(b"\n")  # a blank line is not a row
                line += 1
    return manifest, expected, len(rows)
