"""`builtin` extractor: no weights, made from the corpus itself, for the demo and tests.

* features: log-mel at 50 Hz (hop 320 at 16 kHz, 40 ms Hann window, `n_mels` bands up to 8 kHz),
  normalised per band with the mean/std of the fitting sample (as w2v-BERT features are, with their stats);
* with `prosody: true` the last 3 of the `n_mels` feature channels are prosody instead of mel bands:
  log-F0 (autocorrelation pitch, 60-500 Hz; unvoiced frames get the mean, i.e. 0 once normalised), voicing
  (the normalised autocorrelation peak) and frame log-energy. Log-mel bands of 250 Hz and more cannot
  resolve f0 harmonics, so without them pitch, which carries much of an emotion, is nearly invisible;
* codes: index of the nearest k-means centroid of the normalised frame, the prosody channels weighted by
  `prosody_weight` in the distance (so that a small codebook spends codes on pitch and loudness levels, not
  only on phones). The codebook is fitted once on a sample of the corpus's own frames and saved as
  `<work_dir>/builtin_codebook.npz`; a rerun reuses it.

Frames map to phonetic content of the synthetic corpus (formants, noise bands), so a tiny GPT can learn
text -> codes; with prosody they also carry the delivery (emotion), so codes can be judged for emotion.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from indextts_ray.data.config import FeaturesConfig
from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write

SAMPLE_RATE = 16_000
HOP = 320  # 20 ms: 50 Hz, the semantic-code rate
WIN = 640  # 40 ms
N_FFT = 1024
CODEBOOK_FILE = "builtin_codebook.npz"


def codebook_path(work_dir: Path) -> Path:
    return Path(work_dir) / CODEBOOK_FILE


@lru_cache(maxsize=8)
def _mel_matrix(n_mels: int) -> np.ndarray:
    fb = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney",
                            mel_scale="slaney")
    return fb.numpy().astype(np.float64)  # (n_freqs, n_mels)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    w = np.zeros(N_FFT)
    start = (N_FFT - WIN) // 2
    w[start:start + WIN] = np.hanning(WIN + 1)[:-1]  # periodic Hann, centred in the FFT frame
    return w


def _power_spectrum(wav16k: np.ndarray) -> np.ndarray:
    """(N,) -> (N // 320, N_FFT // 2 + 1) float64 power spectra of 40 ms Hann frames centred on 320 * t."""
    wav = np.asarray(wav16k, dtype=np.float64)
    frames = wav.size // HOP
    if frames == 0:
        return np.zeros((0, N_FFT // 2 + 1))
    padded = np.pad(wav, (N_FFT // 2, N_FFT // 2), mode="reflect" if wav.size > N_FFT // 2 else "constant")
    idx = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    return np.abs(np.fft.rfft(padded[idx] * _window(), axis=1)) ** 2  # (T, n_freqs)


def log_mel(wav16k: np.ndarray, n_mels: int) -> np.ndarray:
    """(N,) -> (N // 320, n_mels) float32 log-mel; frame t is centred on sample 320 * t."""
    spec = _power_spectrum(wav16k)
    return np.log(np.maximum(spec @ _mel_matrix(n_mels), 1e-10)).astype(np.float32)


F0_MIN, F0_MAX = 60.0, 500.0  # Hz, the pitch search range
PROSODY_CHANNELS = 3  # log-F0, voicing, log-energy
VOICED = 0.5  # normalised autocorrelation peak above which a frame counts as voiced
OCTAVE_TOLERANCE = 0.85  # a shorter-lag peak this close to the best one is the period (not a multiple of it)


@lru_cache(maxsize=1)
def _window_autocorr() -> np.ndarray:
    ac = np.fft.irfft(np.abs(np.fft.rfft(_window())) ** 2)
    return np.maximum(ac / ac[0], 1e-3)


def raw_features(wav16k: np.ndarray, n_mels: int, prosody: bool) -> np.ndarray:
    """(N,) -> (T, n_mels) float64 unnormalised frames: log-mel, or with `prosody` n_mels - 3 log-mel bands +
    log-F0 (NaN where unvoiced), voicing, log-energy (module doc)."""
    spec = _power_spectrum(wav16k)
    if not prosody:
        return np.log(np.maximum(spec @ _mel_matrix(n_mels), 1e-10))
    mel = np.log(np.maximum(spec @ _mel_matrix(n_mels - PROSODY_CHANNELS), 1e-10))
    lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    ac = np.fft.irfft(spec, axis=1)[:, : hi + 1]  # (T, lags): autocorrelation of each windowed frame
    ac = ac / np.maximum(ac[:, :1], 1e-12) / _window_autocorr()[None, : hi + 1]  # unbiased, 1 at lag 0
    # the shortest lag that is a local peak within OCTAVE_TOLERANCE of the best: multiples of the period score
    # about as high (and the unbiasing lifts long lags), so the plain argmax would often answer f0/2 or f0/3
    band = ac[:, lo - 1 : hi + 1]  # (T, lags + 2)
    mid = band[:, 1:-1]
    peak = (mid >= band[:, :-2]) & (mid >= band[:, 2:])
    best = mid.max(axis=1, keepdims=True)
    lag = lo + np.argmax(peak & (mid >= OCTAVE_TOLERANCE * best), axis=1)  # (T,) first such lag
    voicing = ac[np.arange(len(ac)), lag]
    log_f0 = np.where(voicing > VOICED, np.log(SAMPLE_RATE / lag), np.nan)
    energy = np.log(np.maximum(spec.sum(axis=1), 1e-10))
    return np.column_stack([mel, log_f0, voicing, energy])


class BuiltinExtractor:
    """Normalised log-mel features and nearest-centroid codes (see the module docstring)."""

    frame_rate = 50

    def __init__(self, mean: np.ndarray, std: np.ndarray, centroids: np.ndarray, prosody: bool = False,
                 weights: np.ndarray | None = None):
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.centroids = centroids.astype(np.float32)  # (K, dim), in the weighted space
        self.dim = int(centroids.shape[1])
        self.codebook_size = int(centroids.shape[0])
        self.prosody = bool(prosody)
        self.weights = np.ones(self.dim) if weights is None else np.asarray(weights, dtype=np.float64)
        self._c_sq = np.sum(self.centroids.astype(np.float64) ** 2, axis=1)

    def features(self, wav16k: np.ndarray) -> np.ndarray:
        return normalise(raw_features(wav16k, self.dim, self.prosody), self.mean, self.std)

    def codes(self, wav16k: np.ndarray) -> np.ndarray:
        return self.assign(self.features(wav16k))

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """(T, dim) normalised frames -> (T,) int32 nearest-centroid indices (prosody channels weighted)."""
        f = feats.astype(np.float64) * self.weights
        dist = self._c_sq[None, :] - 2.0 * f @ self.centroids.T.astype(np.float64)  # |f|^2 is constant per row
        return np.argmin(dist, axis=1).astype(np.int32)


def fit_codebook(cfg: FeaturesConfig, wavs: Iterable[np.ndarray], work_dir: Path) -> Path:
    """Fit the k-means codebook on up to `cfg.kmeans_sample_frames` frames of `wavs` (16 kHz) and save it."""
    from sklearn.cluster import KMeans

    if cfg.prosody and cfg.n_mels <= PROSODY_CHANNELS:
        raise DataError(f"data.features.prosody needs n_mels > {PROSODY_CHANNELS} (its last 3 channels are prosody)")
    chunks, total = [], 0
    for wav in wavs:
        m = raw_features(wav, cfg.n_mels, cfg.prosody)
        chunks.append(m)
        total += len(m)
        if total >= cfg.kmeans_sample_frames:
            break
    if total < cfg.codebook_size:
        raise DataError(f"only {total} audio frames to fit a {cfg.codebook_size}-entry builtin codebook; "
                        "lower data.features.codebook_size or add audio")
    frames = np.concatenate(chunks)[: cfg.kmeans_sample_frames].astype(np.float64)
    mean, std = np.nanmean(frames, axis=0), np.nanstd(frames, axis=0) + 1e-5  # log-F0: over voiced frames
    weights = channel_weights(cfg)
    normed = normalise(frames, mean, std).astype(np.float64) * weights
    km = KMeans(n_clusters=cfg.codebook_size, n_init=3, max_iter=200, random_state=cfg.kmeans_seed)
    km.fit(normed)
    centroids = km.cluster_centers_
    path = codebook_path(work_dir)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mean=mean, std=std, centroids=centroids, frames=np.int64(len(frames)),
                     kmeans_seed=np.int64(cfg.kmeans_seed), prosody=np.bool_(cfg.prosody), weights=weights)

    return atomic_write(path, write)


def code_vectors(path: str | Path) -> torch.Tensor:
    """(codebook_size, n_mels) float32: each code's k-means centroid as a normalised feature frame (the prosody
    weights of the distance divided out), read from a fitted `builtin_codebook.npz` (a file, or the folder that
    holds it: `<prepared>/features`). What a code stands for, e.g. to initialise a code embedding
    (`eval.codeclf`)."""
    path = Path(path)
    if path.is_dir():
        path = codebook_path(path)
    if not path.is_file():
        raise DataError(f"{path}: no builtin codebook (code vectors exist only for data prepared with "
                        "data.features.kind=builtin)")
    with np.load(path) as z:
        centroids = z["centroids"].astype(np.float64)
        weights = z["weights"].astype(np.float64) if "weights" in z else np.ones(centroids.shape[1])
    return torch.from_numpy((centroids / weights).astype(np.float32))


def normalise(frames: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(T, dim) raw frames -> float32 normalised frames; NaN (an unvoiced log-F0) becomes 0, the mean."""
    return np.nan_to_num((frames - mean) / std, nan=0.0).astype(np.float32)


def channel_weights(cfg: FeaturesConfig) -> np.ndarray:
    """(n_mels,) k-means distance weights: 1, and `prosody_weight` on the prosody channels."""
    w = np.ones(cfg.n_mels)
    if cfg.prosody:
        w[-PROSODY_CHANNELS:] = cfg.prosody_weight
    return w


def build(cfg: FeaturesConfig, work_dir: Path) -> BuiltinExtractor:
    """Load the fitted codebook from `work_dir`; it must match `cfg` (n_mels, codebook_size, prosody)."""
    path = codebook_path(work_dir)
    if not path.is_file():
        raise DataError(f"{path}: no builtin codebook; `indextts-ray prepare` fits it on the corpus first")
    with np.load(path) as z:
        mean, std, centroids = z["mean"], z["std"], z["centroids"]
        prosody = bool(z["prosody"]) if "prosody" in z else False
        weights = z["weights"] if "weights" in z else np.ones(centroids.shape[1])
    if centroids.shape != (cfg.codebook_size, cfg.n_mels):
        raise DataError(f"{path}: codebook is {centroids.shape[0]} x {centroids.shape[1]}, config wants "
                        f"codebook_size {cfg.codebook_size} x n_mels {cfg.n_mels}; delete it to refit")
    if prosody != cfg.prosody or not np.allclose(weights, channel_weights(cfg)):
        raise DataError(f"{path}: codebook fitted with prosody={prosody} (weights {weights[-1]:g}), config wants "
                        f"prosody={cfg.prosody} (prosody_weight {cfg.prosody_weight:g}); delete it to refit")
    return BuiltinExtractor(mean, std, centroids, prosody, weights)
