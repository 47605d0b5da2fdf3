"""The real-weight extractor's loaders, run on tiny random-weight files in the released on-disk formats.

* w2v-BERT: a tiny `Wav2Vec2BertConfig` (18 layers, hidden 32) saved with `save_pretrained`, plus the
  `SeamlessM4TFeatureExtractor` preprocessor config (spec section 4);
* stats: `torch.save({"mean", "var"})`;
* codec: a safetensors file whose keys/shapes are derived from the released key table
  (`assets/semantic_codec_state_dict.tsv`) with 2 ConvNeXt blocks and small sizes, not from our own module.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from indextts_ray.data.config import FeaturesConfig
from indextts_ray.data.features.base import build_extractor
from indextts_ray.data.features.w2vbert_maskgct import (
    SemanticCodec,
    W2VBertMaskGCTExtractor,
    load_semantic_codec,
    load_stats,
    load_w2vbert,
)
from indextts_ray.errors import DataError

TSV = Path(__file__).parent / "assets" / "semantic_codec_state_dict.tsv"
H = 32  # tiny hidden size (w2v-BERT and codec input)
TINY = {1024: H, 384: 16, 2048: 48, 8192: 64}  # official size -> tiny size; 8, 7 and 1 stay


def _tsv_rows() -> list[tuple[str, tuple[int, ...]]]:
    lines = TSV.read_text().splitlines()[1:]
    return [(c[0], tuple(int(d) for d in c[1].split("x"))) for c in (line.split("\t") for line in lines)]


def _tiny_codec_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _tsv_rows():
        m = re.search(r"\.convnext\.(\d+)\.", key)
        if m and int(m.group(1)) >= 2:
            continue
        state[key] = torch.randn(tuple(TINY.get(d, d) for d in shape), generator=g) * 0.3
    return state


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: thread start-up and contention cost more than they save on a shared 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    root = tmp_path_factory.mktemp("w2v")
    torch.manual_seed(0)
    cfg = Wav2Vec2BertConfig(hidden_size=H, num_hidden_layers=18, num_attention_heads=2, intermediate_size=64,
                             conv_depthwise_kernel_size=5, left_max_position_embeddings=4,
                             right_max_position_embeddings=2, feature_projection_input_dim=160,
                             apply_spec_augment=False, layerdrop=0.0)
    Wav2Vec2BertModel(cfg).save_pretrained(root / "w2v-bert-2.0")
    SeamlessM4TFeatureExtractor(padding_value=1.0).save_pretrained(root / "w2v-bert-2.0")
    torch.save({"mean": torch.randn(H) * 0.1, "var": torch.rand(H) + 0.5}, root / "wav2vec2bert_stats.pt")
    save_file(_tiny_codec_state(), root / "model.safetensors")
    return {"w2v": root / "w2v-bert-2.0", "stats": root / "wav2vec2bert_stats.pt", "codec": root / "model.safetensors"}


@pytest.fixture(scope="module")
def extractor(assets, tmp_path_factory) -> W2VBertMaskGCTExtractor:
    cfg = FeaturesConfig(kind="w2vbert-maskgct", w2vbert_dir=str(assets["w2v"]), w2v_stat_path=str(assets["stats"]),
                         semantic_codec_path=str(assets["codec"]))
    return build_extractor(cfg, tmp_path_factory.mktemp("work"))  # through the registry, as prepare does


def _wav(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / 16000
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * noise).astype(np.float32)


def test_official_codec_key_set_matches_the_released_table():
    with torch.device("meta"):
        codec = SemanticCodec()  # official sizes: 8192 codes, 1024 hidden, 12 blocks of 384/2048
    ours = [(k, tuple(v.shape)) for k, v in codec.state_dict().items()]
    assert ours == _tsv_rows()  # same keys, same shapes, same registration order
    assert len(ours) == 239 and sum(int(np.prod(s)) for _, s in ours) == 44_289_808
    assert all(v.dtype == torch.float32 for v in codec.state_dict().values())


def test_extractor_shapes_rate_and_determinism(extractor):
    ex = extractor
    assert (ex.dim, ex.frame_rate, ex.codebook_size) == (H, 50, 64)
    wav = _wav(32000)  # 2 s: 1 + (32000 - 400) // 160 = 198 fbank frames -> 99 frames of 20 ms
    feats, codes = ex.features(wav), ex.codes(wav)
    assert feats.shape == (99, H) and feats.dtype == np.float32
    assert codes.shape == (99,) and codes.dtype == np.int32 and codes.min() >= 0 and codes.max() < 64
    assert len(np.unique(codes)) > 1
    f2, c2 = ex.extract(wav)  # a second run of both models: deterministic
    np.testing.assert_array_equal(f2, feats)
    np.testing.assert_array_equal(c2, codes)
    # odd fbank count: 16160 samples -> 99 frames -> T = 50 with a masked last frame; only 49 are real
    f3, c3 = ex.extract(_wav(16160))
    assert f3.shape == (49, H) and c3.shape == (49,)
    with pytest.raises(ValueError, match="400 samples"):
        ex.features(np.zeros(399, np.float32))


def test_features_are_layer17_of_the_full_model_normalised(extractor, assets):
    """Truncating to 17 layers, the hidden-state index and the stats normalisation, against plain transformers."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    full = Wav2Vec2BertModel.from_pretrained(assets["w2v"], local_files_only=True).eval()
    fe = SeamlessM4TFeatureExtractor.from_pretrained(assets["w2v"], local_files_only=True)
    stats = torch.load(assets["stats"], weights_only=True)
    wav = _wav(24000, seed=1)
    x = fe(wav, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        h = full(**x, output_hidden_states=True).hidden_states[17]
    expected = ((h - stats["mean"]) / stats["var"].sqrt())[0].numpy()
    got = extractor.features(wav)
    assert got.shape == expected.shape == (74, H)  # 1 + (24000 - 400) // 160 = 148 fbank frames, even
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_codec_quantiser_matches_the_spec_math(assets):
    """Codes = cosine argmax of the weight-normed 1x1 projection; embedding = out_project(raw code row)."""
    codec = load_semantic_codec(assets["codec"])
    sd = load_file(assets["codec"])
    x = torch.randn(1, 60, H, generator=torch.Generator().manual_seed(3))
    codes, emb = codec.quantize(x)
    assert codes.shape == (1, 60) and codes.dtype == torch.int64 and emb.shape == (1, 60, H)
    with torch.no_grad():
        z = codec.encoder(x.transpose(1, 2)).numpy()[0]  # (T, H): the encoder is checked by the key table
    p = "quantizer.quantizers.0."

    def wn(name):
        v, g = sd[p + name + ".weight_v"].numpy()[:, :, 0], sd[p + name + ".weight_g"].numpy()[:, 0, 0]
        return g[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True), sd[p + name + ".bias"].numpy()

    w_in, b_in = wn("in_project")
    z_e = z @ w_in.T + b_in
    cb = sd[p + "codebook.weight"].numpy()
    cos = (z_e / np.linalg.norm(z_e, axis=1, keepdims=True)) @ (cb / np.linalg.norm(cb, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(codes[0].numpy(), cos.argmax(1))
    w_out, b_out = wn("out_project")
    np.testing.assert_allclose(emb[0].numpy(), cb[codes[0].numpy()] @ w_out.T + b_out, atol=1e-5)


def test_codec_key_mismatch_is_a_readable_error(tmp_path):
    state = _tiny_codec_state()
    del state["decoder.1.bias"]
    state["encoder.0.extra.weight"] = torch.zeros(1)
    state["encoder.1.bias"] = torch.zeros(H + 1)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(DataError) as e:
        load_semantic_codec(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing 1 [decoder.1.bias]" in msg and "unexpected 1 [encoder.0.extra.weight]" in msg
    assert "wrong shape 1 [encoder.1.bias]" in msg
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="cannot read as safetensors"):
        load_semantic_codec(tmp_path / "junk.safetensors")


def test_stats_and_w2v_loader_errors(assets, tmp_path):
    torch.save({"mean": torch.zeros(H), "std": torch.ones(H)}, tmp_path / "s.pt")
    with pytest.raises(DataError, match="keys mean and var"):
        load_stats(tmp_path / "s.pt", H)
    with pytest.raises(DataError, match=r"must both be \(16,\)"):
        load_stats(assets["stats"], 16)
    with pytest.raises(DataError, match="layer 19 is not in 1..18"):
        load_w2vbert(assets["w2v"], 19)
    # a weight file missing one tensor: transformers would initialise it randomly; we refuse
    broken = tmp_path / "w2v"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_bytes((assets["w2v"] / name).read_bytes())
    sd = load_file(assets["w2v"] / "model.safetensors")
    del sd["encoder.layers.3.ffn1.output_dense.bias"]
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match="encoder.layers.3.ffn1.output_dense.bias"):
        load_w2vbert(broken, 17)
    with pytest.raises(DataError, match="not a w2v-BERT 2.0 folder"):
        load_w2vbert(tmp_path / "nowhere", 17)


def test_mismatched_codec_and_w2v_sizes(assets, tmp_path):
    other = {1024: 24, 384: 16, 2048: 48, 8192: 64}  # hidden 24 instead of 32
    state = {k: torch.zeros(tuple(other.get(d, d) for d in shape)) for k, shape in _tsv_rows()
             if not ((m := re.search(r"\.convnext\.(\d+)\.", k)) and int(m.group(1)) >= 2)}
    save_file(state, tmp_path / "codec24.safetensors")
    cfg = FeaturesConfig(kind="w2vbert-maskgct", w2vbert_dir=str(assets["w2v"]), w2v_stat_path=str(assets["stats"]),
                         semantic_codec_path=str(tmp_path / "codec24.safetensors"))
    with pytest.raises(DataError, match="codec input size 24 != w2v-BERT hidden size 32"):
        build_extractor(cfg, tmp_path)
