"""Decode an audio file, validate it and bring it to mono 16 kHz for the feature extractors.

`load_checked` returns either a `LoadedAudio` or a `Rejection`; decoding errors are rejections with the
decoder's message, never swallowed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from indextts_ray.data.config import DataConfig
from indextts_ray.data.manifest import Rejection
from indextts_ray.data.validate import check_audio, check_duration


@dataclass
class LoadedAudio:
    wav16k: np.ndarray  # (N,) float32 mono at feature_sample_rate
    duration: float  # seconds, of the decoded file
    source_rate: int
    resampled: bool  # the file was not at cfg.sample_rate
    downmixed: bool  # the file had more than one channel


def header_duration(path: str) -> float | Rejection:
    """Duration from the file header (no decoding), or why the file cannot be opened."""
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for unknown formats
        return _open_error(path, e)
    return info.frames / info.samplerate if info.samplerate else 0.0


def load_checked(path: str, cfg: DataConfig, declared_duration: float | None = None,
                 max_seconds: float | None = None, check_length: bool = True) -> LoadedAudio | Rejection:
    """Decode `path`, run the audio checks, downmix and resample to `cfg.feature_sample_rate`.

    `max_seconds` keeps only the start of the file (prompts); duration checks then use the full length.
    `check_length=False` skips min/max duration (explicit prompt files are cut, not judged by length).
    """
    try:
        data, sr, total = _read(path, max_seconds)
    except Exception as e:
        return _open_error(path, e)
    if total == 0 or data.shape[0] == 0:
        return Rejection("empty_audio", "zero samples")
    if sr < cfg.min_sample_rate:
        return Rejection("low_sample_rate", f"{sr} Hz < min_sample_rate {cfg.min_sample_rate} Hz")
    duration = total / sr
    bad = check_duration(duration, cfg.min_duration, cfg.max_duration) if check_length else None
    if bad:
        return bad
    if declared_duration is not None and cfg.duration_tolerance is not None:
        if abs(declared_duration - duration) > cfg.duration_tolerance:
            return Rejection("duration_mismatch", f"declared {declared_duration:.2f} s, audio {duration:.2f} s")
    downmixed = data.shape[1] > 1
    wav = _mono(data)
    bad = check_audio(wav, sr, cfg.silence_dbfs, cfg.clip_level, cfg.max_clip_fraction, cfg.clip_run)
    if bad:
        return bad
    return LoadedAudio(
        wav16k=resample(wav, sr, cfg.feature_sample_rate), duration=duration, source_rate=sr,
        resampled=sr != cfg.sample_rate, downmixed=downmixed,
    )


def read_wav16k(path: str, rate: int, max_seconds: float | None = None) -> np.ndarray:
    """The samples `load_checked` gives the extractor for a file it accepted, without re-running the checks
    (streaming features recompute exactly what `prepare` computed). Raises OSError/RuntimeError when the file
    cannot be read."""
    data, sr, _ = _read(path, max_seconds)
    return resample(_mono(data), sr, rate)


def _read(path: str, max_seconds: float | None) -> tuple[np.ndarray, int, int]:
    """(samples (N, C) float32, sample rate, frames of the whole file); only the first `max_seconds` read."""
    with sf.SoundFile(path) as f:
        sr, total = f.samplerate, f.frames
        n = total if max_seconds is None else min(total, int(max_seconds * sr))
        return f.read(n, dtype="float32", always_2d=True), sr, total


def _mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Windowed-sinc resampling (torchaudio defaults, as IndexTTS2 and community trainers use)."""
    if sr == target:
        return np.ascontiguousarray(wav, dtype=np.float32)
    # imported here: the metadata scan's worker processes use this module's header reader without torch
    import torch
    import torchaudio.functional as AF

    g = np.gcd(sr, target)  # torchaudio's kernel size grows with the reduced rates
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), sr // g, target // g)
    return out.numpy()


def _open_error(path: str, e: Exception) -> Rejection:
    if not os.path.exists(path):
        return Rejection("missing_audio", f"{path} does not exist")
    if not os.access(path, os.R_OK) or (isinstance(e, OSError) and e.errno == errno.EACCES):
        return Rejection("unreadable_audio", f"{path}: permission denied")
    return Rejection("corrupt_audio", f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
