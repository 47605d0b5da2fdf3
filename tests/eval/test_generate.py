"""Generation: the KV cache changes nothing, batching/left padding changes nothing, stopping and limits work,
the two position conventions differ, and the emotion-vector sources are wired as documented."""

import pytest
import torch

from indextts_ray.eval.generate import (
    SamplingConfig,
    blend_emovec,
    build_conditioning,
    choose_next,
    generate_codes,
    label_emovec,
    resolve_emovec,
)
from indextts_ray.model.gpt2 import KVCache
from indextts_ray.model.heads import EmotionTable
from indextts_ray.model.unifiedvoice import UnifiedVoice

from .conftest import tiny_cfg

MAX = 30


@pytest.fixture(scope="module")
def setup():
    """A fresh tiny model whose GPT weights are scaled x3, so that the prompt and text actually change the
    codes (at init scale every item emits the same sequence) and items stop at different steps."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = UnifiedVoice(cfg).eval()
    g = torch.Generator().manual_seed(1)
    text = torch.randint(2, 256, (3, 9), generator=g)
    text_lengths = torch.tensor([9, 4, 6])
    feats = torch.randn(3, 40, cfg.input_dim, generator=g)
    feat_lengths = torch.tensor([40, 31, 25])
    with torch.no_grad():
        for p in model.gpt.parameters():
            p.mul_(3)
        conds = build_conditioning(model, feats, feat_lengths, resolve_emovec(model, feats, feat_lengths))
    return model, conds, text, text_lengths


@torch.no_grad()
def reference_greedy(model: UnifiedVoice, conds, text, text_length: int, max_codes: int) -> list[int]:
    """One item, no cache, no padding: rerun the *training* forward (`compute_logits`, positions k+1) on the
    whole sequence every step and take the argmax at the last position. Independent of `generate_codes`."""
    cfg = model.cfg
    codes: list[int] = []
    while len(codes) < max_codes:
        c = torch.tensor([codes], dtype=torch.long).reshape(1, len(codes))
        _, mel_logits, _, _ = model.compute_logits(conds, text[:, :text_length], torch.tensor([text_length]),
                                                   c, torch.tensor([len(codes)]))
        logits = mel_logits[0, len(codes)].clone()  # the position whose input is start_mel / the last code
        logits[cfg.start_mel_token] = float("-inf")
        nxt = int(logits.argmax())
        if nxt == cfg.stop_mel_token:
            break
        codes.append(nxt)
    return codes


def test_greedy_kv_cache_equals_no_cache_and_the_training_forward(setup):
    model, conds, text, text_lengths = setup
    cached = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX))
    recomputed = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX, use_cache=False))
    assert torch.equal(cached.codes, recomputed.codes) and torch.equal(cached.lengths, recomputed.lengths)
    # one item stops early, the others run into the limit: padding and stopping are both exercised
    assert cached.lengths.tolist() == [30, 8, 30]
    assert cached.stopped.tolist() == [False, True, False]
    assert cached.codes[1, 8:].eq(model.cfg.stop_mel_token).all()  # right-padded with stop
    # batched + left-padded == each item alone through the training code path (exact codes)
    for i, n in enumerate(text_lengths.tolist()):
        assert cached.as_lists()[i] == reference_greedy(model, conds[i : i + 1], text[i : i + 1], n, MAX)


def test_sampling_kv_cache_equals_no_cache_and_is_seeded(setup):
    model, conds, text, text_lengths = setup
    s = SamplingConfig(do_sample=True, top_p=0.9, top_k=20, temperature=0.9, max_codes=MAX, seed=3)
    cached = generate_codes(model, conds, text, text_lengths, s)
    recomputed = generate_codes(model, conds, text, text_lengths, SamplingConfig(**{**s.__dict__, "use_cache": False}))
    assert torch.equal(cached.codes, recomputed.codes)
    again = generate_codes(model, conds, text, text_lengths, s)
    assert torch.equal(cached.codes, again.codes)
    greedy = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX))
    assert cached.as_lists() != greedy.as_lists()  # sampling really samples


def test_official_positions_change_codes_and_match_without_cache(setup):
    model, conds, text, text_lengths = setup
    s = SamplingConfig(max_codes=MAX, official_positions=True)
    official = generate_codes(model, conds, text, text_lengths, s)
    recomputed = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX, official_positions=True,
                                                                                  use_cache=False))
    training = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX))
    assert torch.equal(official.codes, recomputed.codes)
    first = [c[0] for c in official.as_lists()]
    assert first == [c[0] for c in training.as_lists()]  # c_0 comes from start_mel at position 0 in both
    assert official.as_lists() != training.as_lists()  # c_1 onwards sees other positions


def test_item_limits_and_model_mode_restored(setup):
    model, conds, text, text_lengths = setup
    model.train()
    try:
        out = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX),
                             item_limits=torch.tensor([5, 0, 40]))
        assert model.training
    finally:
        model.eval()
    assert out.lengths.tolist() == [5, 0, 30] and out.stopped.tolist() == [False, False, False]
    full = generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=MAX))
    assert out.as_lists()[0] == full.as_lists()[0][:5]
    with pytest.raises(ValueError, match="max_mel_tokens"):
        generate_codes(model, conds, text, text_lengths, SamplingConfig(max_codes=model.cfg.max_mel_tokens + 1))


def test_cached_stack_equals_training_stack_without_padding():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = UnifiedVoice(cfg).eval()
    x = torch.randn(2, 12, cfg.model_dim)
    full = model.gpt(x)
    mask = torch.ones(2, 12, dtype=torch.bool)
    torch.testing.assert_close(model.gpt.forward_cached(x, mask), full, atol=1e-5, rtol=1e-5)
    cache = KVCache.for_stack(model.gpt, 2, 12, x.device, x.dtype)
    parts = [model.gpt.forward_cached(x[:, :7], mask[:, :7], cache)]
    parts += [model.gpt.forward_cached(x[:, i : i + 1], mask[:, : i + 1], cache) for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cache full"):
        model.gpt.forward_cached(x[:, :1], torch.ones(2, 13, dtype=torch.bool), cache)


def test_choose_next_filters():
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.0]]).repeat(200, 1)
    s = SamplingConfig(do_sample=True, top_p=0.5)  # p(0) = 0.71 >= 0.5: only token 0 survives
    assert choose_next(logits, s, torch.Generator().manual_seed(0)).eq(0).all()
    s = SamplingConfig(do_sample=True, top_k=2)
    picks = choose_next(logits, s, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}
    assert choose_next(logits, SamplingConfig(), None).eq(0).all()
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_emotion_vector_sources():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = UnifiedVoice(cfg).eval()
    table = EmotionTable(cfg.emotion_labels, cfg.emotion_table_dim, cfg.model_dim)
    g = torch.Generator().manual_seed(2)
    spk, emo = torch.randn(2, 30, cfg.input_dim, generator=g), torch.randn(2, 25, cfg.input_dim, generator=g)
    lens, elens = torch.tensor([30, 22]), torch.tensor([25, 25])
    with torch.no_grad():
        base = model.get_emovec(spk, lens)
        torch.testing.assert_close(resolve_emovec(model, spk, lens), base)
        merged = model.merge_emovec(spk, emo, lens, elens, alpha=0.3)
        torch.testing.assert_close(resolve_emovec(model, spk, lens, emo, elens, alpha=0.3), merged)
        target = label_emovec(table, ["sad", "angry"])
        assert torch.equal(target[1], table.emo_vec("angry")[0])
        assert torch.equal(resolve_emovec(model, spk, lens, emo_vec=target), target)  # alpha 1: as-is
        torch.testing.assert_close(resolve_emovec(model, spk, lens, emo_vec=target, alpha=0.25),
                                   base + 0.25 * (target - base))
        assert torch.equal(blend_emovec(base, target, 0.0), base)
    with pytest.raises(ValueError, match="not both"):
        resolve_emovec(model, spk, lens, emo, elens, emo_vec=target)
