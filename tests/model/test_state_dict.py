"""The official key set: names, order, shapes, dtypes and parameter count, checked against the spec table."""

import re

import pytest
import torch

from indextts_ray.model import LossWeights, build_model
from indextts_ray.model.flops import flops_per_token, gpt_seq_len

from .conftest import ASSETS, model_cfg

OFFICIAL_PARAMS = 865_980_639


def spec_rows() -> list[list[str]]:
    lines = (ASSETS / "unifiedvoice_v2_state_dict.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["key", "shape", "dtype"]
    return [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def official_meta():
    return build_model(model_cfg("indextts2"), device="meta")


def test_official_state_dict_equals_spec_table(official_meta):
    sd = official_meta.state_dict()
    rows = spec_rows()
    assert len(rows) == 665 and len(sd) == 665
    assert list(sd) == [r[0] for r in rows]  # same keys in the same (d7be630) order
    for key, shape, dtype, numel, *_ in rows:
        t = sd[key]
        assert "x".join(map(str, t.shape)) == shape, key
        assert str(t.dtype).removeprefix("torch.") == dtype, key
        assert t.numel() == int(numel), key
    buffers = {k for k, kind in ((r[0], r[4]) for r in rows) if kind == "buffer"}
    assert buffers == {"conditioning_encoder.embed.pos_enc.pe", "emo_conditioning_encoder.embed.pos_enc.pe"}
    assert {name for name, _ in official_meta.named_buffers()} == buffers  # and no hidden extra buffers


def test_official_parameter_count(official_meta):
    assert sum(p.numel() for p in official_meta.parameters()) == OFFICIAL_PARAMS
    assert sum(int(r[3]) for r in spec_rows() if r[4] == "param") == OFFICIAL_PARAMS


def test_no_hf_leftovers(official_meta):
    keys = official_meta.state_dict().keys()
    assert not [k for k in keys if re.match(r"gpt\.(wte|wpe)\.|gpt\.h\.\d+\.attn\.(bias|masked_bias)$", k)]
    assert "gpt.h.0.attn.c_attn.bias" in keys


def test_tiny_has_the_same_structure(tiny_cfg):
    sd = build_model(tiny_cfg).state_dict()
    # Same key names as the official model with fewer blocks; proj_context is absent when the widths agree.
    official = {r[0] for r in spec_rows()}
    assert set(sd) <= official
    assert "perceiver_encoder.proj_context.weight" not in sd  # model_dim == output_size == 32
    assert len(sd) == 149


def test_official_init_scheme():
    torch.manual_seed(0)
    m = build_model(model_cfg("tiny", ["layers=8", "model_dim=128", "heads=4"]))
    assert torch.count_nonzero(m.speed_emb.weight) == 0
    assert m.mel_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.gpt.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # GPT-2 scaled residual init: 0.02 / sqrt(2 * layers) = 0.005
    assert m.gpt.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert torch.count_nonzero(m.gpt.h[0].attn.c_attn.bias) == 0


def test_flops_per_token_official():
    cfg = model_cfg("indextts2")
    assert gpt_seq_len(cfg, 600, 1816) == 2454
    # 6N + 12 L d T with N = 24 * 12 * 1280^2 + 1280 * 8194 (blocks + mel_head), T = 2454
    assert flops_per_token(cfg) == 6 * (471_859_200 + 10_488_320) + 904_642_560 == 3_798_727_680
    assert flops_per_token(cfg, seq_len=100) < flops_per_token(cfg)


def test_loss_weight_defaults():
    w = LossWeights()
    assert (w.text, w.mel, w.speaker, w.emotion, w.emotion_table) == (0.01, 1.0, 0.1, 0.0, 0.0)


def test_model_config_rejects_unsupported_variants():
    from indextts_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="use_mel_codes_as_input"):
        model_cfg("tiny", ["use_mel_codes_as_input=false"])
    with pytest.raises(ConfigError, match="emotion_labels"):
        model_cfg("tiny", ["emotion_labels=[happy, happy]"])
    cfg = model_cfg("indextts2")
    assert (cfg.text_vocab_size, cfg.conditioning_positions, cfg.emo_perceiver_dim) == (12001, 34, 1024)
