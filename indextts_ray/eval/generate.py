"""Autoregressive semantic-code generation with a KV cache: (speaker prompt, emotion, text) -> codes.

Per item the GPT sees the official inference prefix, left-padded so every item's codes start at the same
column (padding rows are zeros and masked out of attention, as in the official `inference_speech`):

    [pad .. pad][ conds (n+2) ][ start_text, t_0 .. t_{T-1}, stop_text ][ start_mel ] c_0 c_1 ...
                                 text_pos 0 .. T+1                         mel_pos p(start), p(c_0), ...

Mel positions (spec §8) -- `SamplingConfig.official_positions`:

    False (default, the training convention)   start_mel 0, c_k at k+1: what the model was trained on.
    True  (official kv_cache=True inference)    start_mel 0, c_k at k+2: position 1 is never used; use it to
                                                reproduce codes the official `infer_v2` would produce.

An item finishes when it emits the stop token (`stopped`) or reaches its code limit; finished items keep
being fed (stop tokens, ignored) so the batch stays rectangular. `start_mel` is never sampled: it is not a
training target, so choosing it would only ever be an artefact of an untrained head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from indextts_ray.model.gpt2 import KVCache
from indextts_ray.model.heads import EmotionTable
from indextts_ray.model.unifiedvoice import UnifiedVoice, aligned_inputs_and_targets


@dataclass(frozen=True)
class SamplingConfig:
    """How the next code is chosen. Greedy unless `do_sample`; sampling = temperature, then top-k, then top-p.

    Args:
        max_codes: most codes per item (excluding stop); None = the model's `max_mel_tokens`.
        official_positions: mel positions of the official kv-cache inference (module doc).
        use_cache: False recomputes the whole sequence every step (slow; the reference the cache must match).
        seed: seeds the sampling generator (same seed, same inputs -> same codes).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_codes: int | None = None
    official_positions: bool = False
    use_cache: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if self.max_codes is not None and self.max_codes < 1:
            problems.append(f"max_codes must be >= 1, got {self.max_codes}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Generated:
    """Codes per item, right-padded with the stop token; `lengths` excludes the stop token."""

    codes: torch.Tensor  # (B, L) long, L = max(lengths)
    lengths: torch.Tensor  # (B,) long
    stopped: torch.Tensor  # (B,) bool: emitted stop (False = hit its limit)

    def as_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.codes.cpu(), self.lengths.tolist())]


# ----------------------------------------------------------------------------- conditioning


def label_emovec(table: EmotionTable, labels: Sequence[str]) -> torch.Tensor:
    """(B, D) emotion vectors of label names from a trained emotion-label table."""
    return torch.cat([table.emo_vec(label) for label in labels])


def blend_emovec(base: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """base + alpha * (target - base), the official `merge_emovec` rule; alpha = 1 returns `target` exactly."""
    return target if alpha == 1.0 else base + alpha * (target - base)


def resolve_emovec(
    model: UnifiedVoice,
    spk_feats: torch.Tensor,
    spk_lengths: torch.Tensor,
    emo_feats: torch.Tensor | None = None,
    emo_lengths: torch.Tensor | None = None,
    emo_vec: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """The emotion vector (B, D) that conditions generation.

    `emo_vec` (e.g. `label_emovec`) or `emo_feats` (a reference clip) is the target, blended with the speaker
    prompt's own vector by `alpha`; with neither, the speaker prompt's vector (the official default).
    """
    if emo_vec is not None and emo_feats is not None:
        raise ValueError("pass emo_vec or emo_feats, not both")
    if emo_vec is None and emo_feats is None:
        return model.get_emovec(spk_feats, spk_lengths)
    if emo_vec is None:
        if emo_lengths is None:
            raise ValueError("emo_feats needs emo_lengths")
        emo_vec = model.get_emovec(emo_feats, emo_lengths)
    if alpha == 1.0:  # the base is not needed: skip its conditioner pass
        return emo_vec
    return blend_emovec(model.get_emovec(spk_feats, spk_lengths), emo_vec, alpha)


def build_conditioning(model: UnifiedVoice, spk_feats: torch.Tensor, spk_lengths: torch.Tensor,
                       emo_vec: torch.Tensor) -> torch.Tensor:
    """(B, n+2, D) GPT prefix rows from the speaker prompt features and an emotion vector."""
    return model.build_conds(model.get_speaker_latents(spk_feats, spk_lengths), emo_vec)


# ----------------------------------------------------------------------------- decoding


def choose_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids: argmax, or a sample after temperature / top-k / top-p filtering."""
    if not sampling.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.size(-1):
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the most likely token is always kept)
        drop = probs.cumsum(-1) - probs >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def inference_prefix(model: UnifiedVoice, conds: torch.Tensor, text_ids: torch.Tensor,
                     text_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prefix embeddings (B, P, D) up to and including start_mel (at mel position 0), and its
    key mask (B, P) (False = padding). P = n+2 + max(T)+2 + 1."""
    cfg = model.cfg
    text_lengths = text_lengths.to(conds.device)
    text_in, _ = aligned_inputs_and_targets(text_ids.to(conds.device), text_lengths,
                                            cfg.start_text_token, cfg.stop_text_token)  # (B, T+2)
    text_emb = model.text_embedding(text_in) + model.text_pos_embedding(text_in.size(1), conds.device)
    start = torch.full((conds.size(0), 1), cfg.start_mel_token, dtype=torch.long, device=conds.device)
    start_emb = model.mel_embedding(start) + model.mel_pos_embedding.emb.weight[0]  # (B, 1, D)
    b, n, d = conds.shape
    width = n + text_in.size(1) + 1
    prefix = conds.new_zeros(b, width, d)
    key_mask = torch.zeros(b, width, dtype=torch.bool, device=conds.device)
    for i, t in enumerate(text_lengths.tolist()):
        real = torch.cat((conds[i], text_emb[i, : t + 2], start_emb[i]))  # (n + t+2 + 1, D)
        prefix[i, width - real.size(0) :] = real
        key_mask[i, width - real.size(0) :] = True
    return prefix, key_mask


@torch.no_grad()
def generate_codes(
    model: UnifiedVoice,
    conds: torch.Tensor,
    text_ids: torch.Tensor,
    text_lengths: torch.Tensor,
    sampling: SamplingConfig = SamplingConfig(),
    item_limits: torch.Tensor | None = None,
) -> Generated:
    """Generate codes for a batch (module doc: layout, positions, stopping).

    Args:
        model: the UnifiedVoice (run in eval mode for the call, its mode restored afterwards).
        conds: (B, n+2, D) from `build_conditioning`.
        text_ids: (B, T) BPE ids without start/stop, any padding; text_lengths: (B,).
        sampling: decoding settings.
        item_limits: optional (B,) per-item code limits (capped at `sampling.max_codes`).
    """
    cfg = model.cfg
    cap = sampling.max_codes or cfg.max_mel_tokens
    if cap > cfg.max_mel_tokens:
        raise ValueError(f"max_codes {cap} exceeds the model's max_mel_tokens {cfg.max_mel_tokens}")
    device, b = conds.device, conds.size(0)
    limits = torch.full((b,), cap, dtype=torch.long, device=device)
    if item_limits is not None:
        limits = item_limits.to(device=device, dtype=torch.long).clamp(0, cap)
        cap = int(limits.max()) if b else 0  # no longer than the longest item may get (smaller KV cache)
    generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.do_sample else None
    offset = 2 if sampling.official_positions else 1  # mel position of c_k is k + offset
    was_training = model.training
    model.eval()
    try:
        prefix, key_mask = inference_prefix(model, conds, text_ids, text_lengths)
        cache = KVCache.for_stack(model.gpt, b, prefix.size(1) + cap, device, prefix.dtype) if sampling.use_cache else None
        seq = prefix  # the whole sequence so far (only kept without a cache)
        hidden = model.gpt.forward_cached(prefix, key_mask, cache)[:, -1]  # (B, D)

        stop = cfg.stop_mel_token
        codes = torch.full((b, cap), stop, dtype=torch.long, device=device)
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        stopped = torch.zeros(b, dtype=torch.bool, device=device)
        done = limits == 0
        for k in range(cap):
            if bool(done.all()):
                break
            logits = model.mel_head(model.final_norm(hidden))  # (B, V)
            logits[:, cfg.start_mel_token] = -math.inf
            nxt = choose_next(logits, sampling, generator)
            active = ~done
            emit = active & (nxt != stop)
            stopped |= active & (nxt == stop)
            codes[:, k] = torch.where(emit, nxt, codes[:, k])
            lengths += emit.long()
            done = done | stopped | (lengths >= limits)
            if bool(done.all()):
                break
            feed = torch.where(emit, nxt, torch.full_like(nxt, stop))
            emb = model.mel_embedding(feed)[:, None] + model.mel_pos_embedding.emb.weight[k + offset]  # (B, 1, D)
            key_mask = torch.cat((key_mask, key_mask.new_ones(b, 1)), dim=1)
            if cache is not None:
                hidden = model.gpt.forward_cached(emb, key_mask, cache)[:, -1]
            else:
                seq = torch.cat((seq, emb), dim=1)
                hidden = model.gpt.forward_cached(seq, key_mask)[:, -1]
    finally:
        model.train(was_training)
    width = int(lengths.max()) if b else 0
    return Generated(codes[:, :width], lengths, stopped)
