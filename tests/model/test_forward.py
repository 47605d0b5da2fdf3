"""Forward semantics: numbers of the official implementation, sequence layout, causality, no mutation."""

import pytest
import torch

from indextts_ray.model.unifiedvoice import UnifiedVoice, aligned_inputs_and_targets

from .conftest import GOLDEN_OVERRIDES, fill_deterministic, golden_inputs, make_batch, model_cfg

# Computed once with the official index-tts `indextts/gpt/model_v2.py` (snapshot ee40fa7, its conformer and
# perceiver modules, transformers.GPT2Model 5.24, torch 2.14.1 CPU) loaded strictly with the same weights.
OFFICIAL = {
    "latent_abs_sum": 1121.5279541015625,
    "latent_1_7": [0.43306535482406616, -0.27657026052474976, -1.2129020690917969, -0.5974188446998596],
    "emovec_abs_sum": 111.5791244506836,
    "emovec_0": [-2.025900363922119, 0.538214921951294, 1.6277216672897339, -1.75320565700531],
    "spk_abs_sum": 411.6613464355469,
    "spk_1_2": [0.6426447033882141, 0.9077977538108826, 1.2946444749832153, 2.156419515609741],
    "text_logits_abs_sum": 1755.364013671875,
    "text_logits_1_5": [-0.7712403535842896, -0.34526878595352173, 0.448824405670166, 0.8848537802696228],
    "mel_logits_abs_sum": 677.0502319335938,
    "mel_logits_0_12": [-0.025382518768310547, 0.9112961292266846, 1.0147924423217773, -0.41885945200920105],
}


def close(actual: torch.Tensor, expected, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def golden_model() -> UnifiedVoice:
    m = UnifiedVoice(model_cfg("tiny", GOLDEN_OVERRIDES)).eval()
    fill_deterministic(m)
    return m


@torch.no_grad()
def test_matches_official_implementation(golden_model):
    m, x = golden_model, golden_inputs()
    text, codes = x["text"].clone(), x["codes"].clone()
    latent = m(x["spk_feats"], text, x["text_lengths"], codes, x["code_lengths"], x["emo_feats"],
               cond_mel_lengths=x["spk_lengths"], emo_cond_mel_lengths=x["emo_lengths"],
               use_speed=torch.zeros(2, dtype=torch.long), do_spk_cond=True)  # fmt: skip
    assert latent.shape == (2, 11, 64)
    close(latent.abs().sum(), OFFICIAL["latent_abs_sum"], atol=2e-3)
    close(latent[1, 7, :4], OFFICIAL["latent_1_7"])
    spk = m.get_speaker_latents(x["spk_feats"], x["spk_lengths"])
    emo = m.get_emovec(x["emo_feats"], x["emo_lengths"])
    close(spk.abs().sum(), OFFICIAL["spk_abs_sum"], atol=1e-3)
    close(spk[1, 2, :4], OFFICIAL["spk_1_2"])
    close(emo.abs().sum(), OFFICIAL["emovec_abs_sum"], atol=1e-3)
    close(emo[0, :4], OFFICIAL["emovec_0"])
    text_logits, mel_logits, _, _ = m.compute_logits(
        m.build_conds(spk, emo), x["text"], x["text_lengths"], x["codes"], x["code_lengths"]
    )
    assert text_logits.shape == (2, 9, 257) and mel_logits.shape == (2, 13, 66)
    close(text_logits.abs().sum(), OFFICIAL["text_logits_abs_sum"], atol=3e-3)
    close(text_logits[1, 5, :4], OFFICIAL["text_logits_1_5"])
    close(mel_logits.abs().sum(), OFFICIAL["mel_logits_abs_sum"], atol=2e-3)
    close(mel_logits[0, 12, :4], OFFICIAL["mel_logits_0_12"])


def test_official_forward_fills_stop_in_place(golden_model):
    x = golden_inputs()
    text, codes = x["text"].clone(), x["codes"].clone()
    with torch.no_grad():
        golden_model(x["spk_feats"], text, x["text_lengths"], codes, x["code_lengths"], x["emo_feats"],
                     cond_mel_lengths=x["spk_lengths"], emo_cond_mel_lengths=x["emo_lengths"], do_spk_cond=True)  # fmt: skip
    assert text[1].tolist() == [250, 3, 77, 12, 60, 1, 1]  # length 5: stop_text (1) from index 5 on
    assert codes[1, 8:].tolist() == [65, 65, 65]  # length 8: stop_mel (65 in tiny)
    assert torch.equal(text[0], x["text"][0]) and torch.equal(codes[0], x["codes"][0])


def test_aligned_inputs_and_targets():
    ids = torch.tensor([[7, 8, 9], [7, 99, 99]])
    inp, tgt = aligned_inputs_and_targets(ids, torch.tensor([3, 1]), start=0, stop=1)
    assert inp.tolist() == [[0, 7, 8, 9, 1], [0, 7, 1, 1, 1]]
    assert tgt.tolist() == [[7, 8, 9, 1, 1], [7, 1, 1, 1, 1]]


def test_emovec_argument_skips_the_emotion_path(golden_model):
    x = golden_inputs()
    emo = golden_model.get_emovec(x["emo_feats"], x["emo_lengths"]).detach()
    kw = dict(cond_mel_lengths=x["spk_lengths"], do_spk_cond=True)
    with torch.no_grad():
        a = golden_model(x["spk_feats"], x["text"].clone(), x["text_lengths"], x["codes"].clone(), x["code_lengths"],
                         x["emo_feats"], emo_cond_mel_lengths=x["emo_lengths"], **kw)  # fmt: skip
        b = golden_model(x["spk_feats"], x["text"].clone(), x["text_lengths"], x["codes"].clone(), x["code_lengths"],
                         None, emo_vec=emo, **kw)  # fmt: skip
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_gpt_is_causal_and_items_are_independent(tiny_cfg):
    torch.manual_seed(0)
    m = UnifiedVoice(tiny_cfg).eval()
    batch = make_batch(tiny_cfg)
    conds = m.build_conds(m.get_speaker_latents(batch["spk_feats"], batch["spk_lengths"]),
                          m.get_emovec(batch["spk_feats"], batch["spk_lengths"]))  # fmt: skip
    args = (batch["text_ids"], batch["text_lengths"], batch["codes"], batch["code_lengths"])
    with torch.no_grad():
        ref = m.run_gpt(conds, *args)
        codes = batch["codes"].clone()
        codes[:, 6:] = 3  # change the future: positions <= 6 of the mel part must not move
        out = m.run_gpt(conds, args[0], args[1], codes, args[3])
        alone = m.run_gpt(conds[:1], *(a[:1] for a in args))
    torch.testing.assert_close(out.mel_hidden[:, :7], ref.mel_hidden[:, :7], atol=1e-6, rtol=0)
    assert (out.mel_hidden[:, 8:] - ref.mel_hidden[:, 8:]).abs().max() > 1e-3
    torch.testing.assert_close(out.text_hidden, ref.text_hidden, atol=1e-6, rtol=0)
    # Item 0 is the longest in both parts, so batching it with a shorter item changes nothing.
    torch.testing.assert_close(alone.mel_hidden, ref.mel_hidden[:1], atol=1e-5, rtol=0)


def test_padding_content_does_not_leak_into_the_conditioning(tiny_cfg):
    # The padded *length* does matter (as in the official encoder: the conv module's pointwise bias reaches
    # padded frames and the depthwise conv spreads it), but what the padding frames hold must not.
    torch.manual_seed(0)
    m = UnifiedVoice(tiny_cfg).eval()
    feats = torch.randn(1, 42, tiny_cfg.input_dim)
    other = feats.clone()
    other[:, 30:] = torch.randn(1, 12, tiny_cfg.input_dim) * 5
    n = torch.tensor([30])
    with torch.no_grad():
        torch.testing.assert_close(m.get_emovec(other, n), m.get_emovec(feats, n), atol=1e-5, rtol=0)
        torch.testing.assert_close(m.get_speaker_latents(other, n), m.get_speaker_latents(feats, n), atol=1e-5, rtol=0)
        assert (m.get_emovec(feats, torch.tensor([42])) - m.get_emovec(feats, n)).abs().max() > 1e-3


def test_too_long_inputs_fail_clearly(tiny_cfg):
    m = UnifiedVoice(tiny_cfg)
    long_text = torch.zeros(1, tiny_cfg.max_text_tokens + 1, dtype=torch.long)
    conds = torch.zeros(1, tiny_cfg.conditioning_positions, tiny_cfg.model_dim)
    with pytest.raises(ValueError, match="position table"):
        m.run_gpt(conds, long_text, torch.tensor([5]), torch.zeros(1, 3, dtype=torch.long), torch.tensor([3]))


def test_checkpointing_gives_the_same_gradients(tiny_cfg):
    from indextts_ray.model import LossWeights, TrainingModel

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        tm = TrainingModel(tiny_cfg.model_copy(update={"checkpointing": ckpt, "dropout": 0.1}))
        torch.manual_seed(1)  # same dropout masks in both runs
        tm(make_batch(tiny_cfg), LossWeights())["loss"].backward()
        grads.append(tm.model.gpt.h[0].attn.c_attn.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
