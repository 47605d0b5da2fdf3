"""`builtin` extractor: no weights, made from the corpus itself, for the demo and tests.

* features: log-mel at 50 Hz (hop 320 at 16 kHz, 40 ms Hann window, `n_mels` bands up to 8 kHz),
  normalised per band with the mean/std of the fitting sample (as w2v-BERT features are, with their stats);
* codes: index of the nearest k-means centroid of the normalised frame. The codebook is fitted once on a
  sample of the corpus's own frames and saved as `<work_dir>/builtin_codebook.npz`; a rerun reuses it.

Frames map to phonetic content of the synthetic corpus (formants, noise bands), so a tiny GPT can learn
text -> codes.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
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


def log_mel(wav16k: np.ndarray, n_mels: int) -> np.ndarray:
    """(N,) -> (N // 320, n_mels) float32 log-mel; frame t is centred on sample 320 * t."""
    wav = np.asarray(wav16k, dtype=np.float64)
    frames = wav.size // HOP
    if frames == 0:
        return np.zeros((0, n_mels), dtype=np.float32)
    padded = np.pad(wav, (N_FFT // 2, N_FFT // 2), mode="reflect" if wav.size > N_FFT // 2 else "constant")
    idx = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    spec = np.abs(np.fft.rfft(padded[idx] * _window(), axis=1)) ** 2  # (T, n_freqs)
    return np.log(np.maximum(spec @ _mel_matrix(n_mels), 1e-10)).astype(np.float32)


class BuiltinExtractor:
    """Normalised log-mel features and nearest-centroid codes (see the module docstring)."""

    frame_rate = 50

    def __init__(self, mean: np.ndarray, std: np.ndarray, centroids: np.ndarray):
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.centroids = centroids.astype(np.float32)  # (K, dim)
        self.dim = int(centroids.shape[1])
        self.codebook_size = int(centroids.shape[0])
        self._c_sq = np.sum(self.centroids.astype(np.float64) ** 2, axis=1)

    def features(self, wav16k: np.ndarray) -> np.ndarray:
        return ((log_mel(wav16k, self.dim) - self.mean) / self.std).astype(np.float32)

    def codes(self, wav16k: np.ndarray) -> np.ndarray:
        return self.assign(self.features(wav16k))

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """(T, dim) normalised frames -> (T,) int32 nearest-centroid indices."""
        f = feats.astype(np.float64)
        dist = self._c_sq[None, :] - 2.0 * f @ self.centroids.T.astype(np.float64)  # |f|^2 is constant per row
        return np.argmin(dist, axis=1).astype(np.int32)


def fit_codebook(cfg: FeaturesConfig, wavs: Iterable[np.ndarray], work_dir: Path) -> Path:
    """Fit the k-means codebook on up to `cfg.kmeans_sample_frames` frames of `wavs` (16 kHz) and save it."""
    from sklearn.cluster import KMeans

    chunks, total = [], 0
    for wav in wavs:
        m = log_mel(wav, cfg.n_mels)
        chunks.append(m)
        total += len(m)
        if total >= cfg.kmeans_sample_frames:
            break
    if total < cfg.codebook_size:
        raise DataError(f"only {total} audio frames to fit a {cfg.codebook_size}-entry builtin codebook; "
                        "lower data.features.codebook_size or add audio")
    frames = np.concatenate(chunks)[: cfg.kmeans_sample_frames].astype(np.float64)
    mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-5
    normed = (frames - mean) / std
    km = KMeans(n_clusters=cfg.codebook_size, n_init=3, max_iter=200, random_state=cfg.kmeans_seed)
    km.fit(normed)
    centroids = km.cluster_centers_
    path = codebook_path(work_dir)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mean=mean, std=std, centroids=centroids, frames=np.int64(len(frames)),
                     kmeans_seed=np.int64(cfg.kmeans_seed))

    return atomic_write(path, write)


def build(cfg: FeaturesConfig, work_dir: Path) -> BuiltinExtractor:
    """Load the fitted codebook from `work_dir`; it must match `cfg` (n_mels, codebook_size)."""
    path = codebook_path(work_dir)
    if not path.is_file():
        raise DataError(f"{path}: no builtin codebook; `indextts-ray prepare` fits it on the corpus first")
    with np.load(path) as z:
        mean, std, centroids = z["mean"], z["std"], z["centroids"]
    if centroids.shape != (cfg.codebook_size, cfg.n_mels):
        raise DataError(f"{path}: codebook is {centroids.shape[0]} x {centroids.shape[1]}, config wants "
                        f"codebook_size {cfg.codebook_size} x n_mels {cfg.n_mels}; delete it to refit")
    return BuiltinExtractor(mean, std, centroids)
