"""A plain-PyTorch GPT-2 stack with the Hugging Face weight layout (`gpt.h.{i}.*`, `gpt.ln_f.*`).

Matches `transformers.GPT2Model` as the official UnifiedVoice uses it (token and position tables removed,
inputs are embeddings): pre-norm blocks, HF `Conv1D` matrices stored (in, out), `gelu_new` (tanh GELU),
causal `scaled_dot_product_attention` with scale 1/sqrt(head_dim), dropout on the input, attention
probabilities and both residual branches. No causal-mask buffer (`attn.bias`) exists, so the state dict
holds exactly the official keys.

`GPT2Stack.forward` is the training path (fully causal, no padding mask). `GPT2Stack.forward_cached` is the
inference path: a key-padding mask (left-padded batches) and an optional `KVCache`, so generation feeds one
token per step instead of re-running the whole sequence. It adds no parameters or buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

INIT_STD = 0.02  # GPT2Config.initializer_range
LN_EPS = 1e-5  # GPT2Config.layer_norm_epsilon


class Conv1D(nn.Module):
    """y = x W + b with W stored (in, out), the HF GPT-2 layout, so checkpoints load without transposes."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear wants (out, in); .t() is a free view, and autocast casts it like any linear weight.
        return F.linear(x, self.weight.t(), self.bias)


class KVCache:
    """Keys and values of every layer, preallocated to `capacity` positions: (B, H, capacity, dh) each.

    Filled up to `length`; `GPT2Stack.forward_cached` writes the new positions and advances `length`.
    Preallocating (instead of `torch.cat` per step) keeps each decode step O(1) in copies.
    """

    def __init__(self, layers: int, batch: int, heads: int, capacity: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, heads, capacity, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.capacity = capacity
        self.length = 0

    @classmethod
    def for_stack(cls, stack: GPT2Stack, batch: int, capacity: int, device: torch.device,
                  dtype: torch.dtype) -> KVCache:
        """An empty cache sized for `stack` (its layers and heads)."""
        attn = stack.h[0].attn
        return cls(len(stack.h), batch, attn.heads, capacity, attn.c_proj.weight.shape[0] // attn.heads, device, dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.c_attn = Conv1D(dim, 3 * dim)
        self.c_proj = Conv1D(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.c_attn(x).view(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, dh), views
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.resid_dropout(self.c_proj(y))

    def forward_cached(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        """Inference attention of t new positions (no dropout): `mask` (B, 1, t, past + t) bool, True = attend.

        With a cache, the new keys/values are written at [past, past + t) and attention reads all past + t.
        """
        b, t, d = x.shape
        qkv = self.c_attn(x).view(b, t, 3, self.heads, d // self.heads)  # (B, t, 3, H, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, t, dh)
        if cache is not None:
            end = cache.length + t
            cache.keys[layer][:, :, cache.length : end] = k
            cache.values[layer][:, :, cache.length : end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]  # (B, H, past + t, dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.c_fc = Conv1D(dim, 4 * dim)
        self.c_proj = Conv1D(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gelu_new == tanh-approximated GELU; the fused kernel is one op instead of HF's eight.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT2Stack(nn.Module):
    """(B, T, D) input embeddings -> (B, T, D) hidden states after `ln_f`; fully causal, no padding mask."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, checkpointing: bool = False) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, eps=LN_EPS)
        self.checkpointing = checkpointing
        # GPT-2 scaled init of the two residual projections (HF GPT2PreTrainedModel._init_weights).
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=INIT_STD / math.sqrt(2 * layers))

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        x = self.drop(inputs_embeds)
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.h:
            # Non-reentrant checkpointing replays dropout masks exactly (RNG state is stashed).
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
        return self.ln_f(x)

    def forward_cached(
        self, inputs_embeds: torch.Tensor, key_mask: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Inference forward (no dropout, no checkpointing) of t new positions after `cache.length` cached ones.

        Args:
            inputs_embeds: (B, t, D) embeddings of the new positions.
            key_mask: (B, past + t) bool, False = a padding position no query may attend to (left padding).
            cache: keys/values of the past positions, extended in place; None = no past (t is everything).

        Returns (B, t, D) hidden states after `ln_f`. Attention is causal and skips masked keys; a masked
        (padding) query still attends to itself, so no softmax row is empty (its output is never used).
        """
        b, t, _ = inputs_embeds.shape
        past = 0 if cache is None else cache.length
        if key_mask.shape != (b, past + t):
            raise ValueError(f"key_mask must be (B, past + t) = ({b}, {past + t}), got {tuple(key_mask.shape)}")
        if cache is not None and past + t > cache.capacity:
            raise ValueError(f"KV cache full: {past} + {t} positions > capacity {cache.capacity}")
        q_pos = torch.arange(past, past + t, device=key_mask.device)[:, None]  # (t, 1)
        k_pos = torch.arange(past + t, device=key_mask.device)[None, :]  # (1, past + t)
        allowed = ((k_pos <= q_pos) & key_mask[:, None, :]) | (k_pos == q_pos)  # (B, t, past + t)
        mask = allowed[:, None]  # (B, 1, t, past + t), broadcast over heads
        x = inputs_embeds
        for i, block in enumerate(self.h):
            x = block.forward_cached(x, mask, cache, i)
        if cache is not None:
            cache.length = past + t
        return self.ln_f(x)
