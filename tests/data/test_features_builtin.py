"""The builtin extractor: 50 Hz log-mel features and k-means codes fitted on the corpus itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from indextts_ray.data.audio import resample
from indextts_ray.data.config import FeaturesConfig
from indextts_ray.data.features.base import FRAME_RATE, Extractor, build_extractor
from indextts_ray.data.features.builtin import code_vectors, codebook_path, fit_codebook, log_mel
from indextts_ray.errors import DataError
from tests.data.tiny_corpus import make_good_corpus

CFG = FeaturesConfig(kind="builtin", n_mels=32, codebook_size=64, kmeans_sample_frames=3000)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[np.ndarray]:
    root = tmp_path_factory.mktemp("corpus")
    out = []
    for r in make_good_corpus(root, speakers=3, utts=6):
        y, sr = sf.read(root / r["audio_path"], dtype="float32")
        out.append(resample(y, sr, 16_000))
    return out


@pytest.fixture(scope="module")
def fitted(wavs, tmp_path_factory):
    work = tmp_path_factory.mktemp("features")
    fit_codebook(CFG, iter(wavs), work)
    return work


def test_frames_are_50_hz(wavs):
    m = log_mel(wavs[0], 32)
    assert m.shape == (len(wavs[0]) // 320, 32) and m.dtype == np.float32
    assert log_mel(np.zeros(319, dtype=np.float32), 32).shape == (0, 32)
    assert abs(len(m) - FRAME_RATE * len(wavs[0]) / 16_000) < 1


def test_extractor_follows_the_protocol(fitted, wavs):
    ex = build_extractor(CFG, fitted)
    assert isinstance(ex, Extractor) and (ex.dim, ex.frame_rate, ex.codebook_size) == (32, 50, 64)
    feats, codes = ex.features(wavs[1]), ex.codes(wavs[1])
    assert feats.shape == (len(wavs[1]) // 320, 32) and feats.dtype == np.float32
    assert codes.shape == (len(feats),) and codes.dtype == np.int32
    assert 0 <= codes.min() and codes.max() < 64
    # normalised with the fitting sample's statistics
    allf = np.concatenate([ex.features(w) for w in wavs])
    assert abs(float(allf.mean())) < 0.2 and 0.7 < float(allf.std()) < 1.3


def test_codes_are_learnable_ish(fitted, wavs):
    """The codebook is well used, and the same sound gets the same code while different sounds do not."""
    ex = build_extractor(CFG, fitted)
    codes = np.concatenate([ex.codes(w) for w in wavs])
    usage = np.bincount(codes, minlength=64)
    assert (usage > 0).mean() > 0.8
    assert usage.max() / usage.sum() < 0.2  # no code swallows the corpus
    assert np.array_equal(ex.codes(wavs[2]), ex.codes(wavs[2].copy()))
    # codes are mostly stable frame to frame (phones last several frames) but do change
    same = float(np.mean(codes[1:] == codes[:-1]))
    assert 0.2 < same < 0.95


def test_fit_is_deterministic_and_reused(fitted, wavs, tmp_path):
    fit_codebook(CFG, iter(wavs), tmp_path)
    with np.load(codebook_path(tmp_path)) as a, np.load(codebook_path(fitted)) as b:
        assert np.array_equal(a["centroids"], b["centroids"])
    assert build_extractor(CFG, fitted).codebook_size == 64


def test_missing_or_mismatched_codebook_is_an_error(fitted, wavs, tmp_path):
    with pytest.raises(DataError, match="no builtin codebook"):
        build_extractor(CFG, tmp_path)
    with pytest.raises(DataError, match="codebook_size 32 x n_mels 32"):
        build_extractor(CFG.model_copy(update={"codebook_size": 32}), fitted)
    with pytest.raises(DataError, match="only .* audio frames"):
        fit_codebook(CFG, iter([wavs[0][:16_000]]), tmp_path / "small")


def test_features_config_kinds():
    assert FeaturesConfig().kind == "builtin"
    with pytest.raises(ValueError):
        FeaturesConfig(kind="mfcc")
    assert json.loads(FeaturesConfig().model_dump_json())["n_mels"] == 80


PROSODY = CFG.model_copy(update={"prosody": True, "prosody_weight": 3.0})


def test_prosody_channels_follow_pitch_and_loudness(tmp_path):
    """With `prosody`, the last 3 channels are log-F0 (of a voiced frame), voicing and log-energy."""
    from indextts_ray.data.features.builtin import raw_features

    t = np.arange(16_000) / 16_000
    pulses = lambda f0, gain: gain * np.sign(np.sin(2 * np.pi * f0 * t)) * (0.5 + 0.5 * np.cos(2 * np.pi * 3 * f0 * t))  # noqa: E731
    low, high = raw_features(pulses(110.0, 0.1), 32, True), raw_features(pulses(220.0, 0.3), 32, True)
    assert low.shape == (50, 32)
    mid = slice(5, 45)
    assert np.exp(np.nanmedian(low[mid, -3])) == pytest.approx(110.0, rel=0.03)
    assert np.exp(np.nanmedian(high[mid, -3])) == pytest.approx(220.0, rel=0.03)
    assert (low[mid, -2] > 0.5).all()  # voiced
    assert np.median(high[mid, -1] - low[mid, -1]) > 1.5  # ~9.5 dB louder: log energy +2.2
    noise = raw_features(np.random.default_rng(0).normal(0, 0.1, 16_000), 32, True)
    assert np.isnan(noise[mid, -3]).mean() > 0.9  # unvoiced: no log-F0


def test_prosody_codebook_is_checked_and_weighted(wavs, tmp_path):
    fit_codebook(PROSODY, iter(wavs), tmp_path)
    ex = build_extractor(PROSODY, tmp_path)
    feats = ex.features(wavs[0])
    assert feats.shape == (len(wavs[0]) // 320, 32) and np.isfinite(feats).all()  # unvoiced log-F0 -> 0
    assert np.array_equal(ex.weights[-3:], [3.0, 3.0, 3.0]) and (ex.weights[:-3] == 1).all()
    with pytest.raises(DataError, match="prosody=True"):
        build_extractor(CFG, tmp_path)
    with pytest.raises(DataError, match="prosody_weight 1"):
        build_extractor(PROSODY.model_copy(update={"prosody_weight": 1.0}), tmp_path)


def test_code_vectors_are_the_centroids_as_feature_frames(wavs, tmp_path):
    """`code_vectors`: each code's centroid with the prosody weight divided out, i.e. a normalised feature frame
    whose nearest code is (mostly) itself."""
    fit_codebook(PROSODY, iter(wavs), tmp_path)
    ex = build_extractor(PROSODY, tmp_path)
    vectors = code_vectors(tmp_path)
    assert vectors.dtype == torch.float32 and tuple(vectors.shape) == (64, 32)
    assert torch.equal(vectors, code_vectors(codebook_path(tmp_path)))  # the folder or the file
    assert np.allclose(vectors.numpy()[:, -3:] * 3.0, ex.centroids[:, -3:], atol=1e-5)  # prosody weight 3 out
    assert np.allclose(vectors.numpy()[:, :-3], ex.centroids[:, :-3])  # weight 1 on the mel bands
    assert np.mean(ex.assign(vectors.numpy()) == np.arange(64)) > 0.9
    feats = ex.features(wavs[0])  # the vectors live where features do: per-channel spread of the same order
    assert 0.2 < float(vectors.numpy().std(0).mean() / feats.std(0).mean()) < 5
    with pytest.raises(DataError, match="no builtin codebook"):
        code_vectors(tmp_path / "elsewhere")
