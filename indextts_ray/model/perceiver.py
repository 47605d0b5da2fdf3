"""Perceiver resampler: a fixed number of learned latents cross-attend to a variable-length context.

Names follow the official checkpoint (`perceiver_encoder.*`, `emo_perceiver_encoder.*`): `latents`,
`proj_context` (absent when the context already has the latent width), `layers.{i}.0` attention
(`to_q`, `to_kv`, `to_out`, no biases), `layers.{i}.1.{0,2}` GEGLU feed-forward, `norm.gamma`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIM_HEAD = 64  # official value for both resamplers
DEPTH = 2


class RMSNorm(nn.Module):
    """normalize(x) * sqrt(dim) * gamma (L2-normalised, not mean-square, as the official resampler)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = int(dim * mult * 2 / 3)
    return nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Linear(inner, dim))


class CrossAttention(nn.Module):
    """Latents attend to [latents ; context]; `mask` (B, n + T) is True for keys that may be attended."""

    def __init__(self, dim: int, heads: int, dim_head: int = DIM_HEAD) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = latents.shape
        context = torch.cat((latents, context), dim=1)  # (B, n + T, dim)
        q = self.to_q(latents).view(b, n, self.heads, -1).transpose(1, 2)  # (B, H, n, dh)
        k, v = self.to_kv(context).view(b, context.size(1), 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, S, dh)
        # The latent keys are always valid, so no row is fully masked.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, n, dh)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PerceiverResampler(nn.Module):
    """(B, T, dim_context) context + (B, T) validity -> (B, num_latents, dim)."""

    def __init__(self, dim: int, dim_context: int, num_latents: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.proj_context = nn.Linear(dim_context, dim) if dim_context != dim else nn.Identity()
        self.latents = nn.Parameter(torch.empty(num_latents, dim))
        nn.init.normal_(self.latents, std=0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([CrossAttention(dim, heads), feed_forward(dim, ff_mult)]) for _ in range(DEPTH)
        )
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        x = self.proj_context(context)  # (B, T, dim)
        latents = self.latents.unsqueeze(0).expand(x.size(0), -1, -1)  # (B, n, dim)
        mask = F.pad(context_mask, (latents.size(1), 0), value=True)  # (B, n + T): latents lead the keys
        for attn, ff in self.layers:
            latents = attn(latents, x, mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
