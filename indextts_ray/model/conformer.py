"""WeNet-style Conformer encoder used for the speaker and emotion conditioning paths.

Submodule and parameter names follow the official checkpoint (`conditioning_encoder.*`,
`emo_conditioning_encoder.*`): Conv2dSubsampling2 `embed` with a stored sinusoidal `embed.pos_enc.pe`,
pre-norm blocks (rel-pos self-attention, convolution module, feed-forward, final norm), `after_norm`.
Dropout is 0 everywhere, as in the official encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from indextts_ray.model.config import ConformerConfig

POS_ENC_MAX_LEN = 5000  # rows of the stored `pe` table (official value; part of the checkpoint)
CONV_KERNEL = 15  # depthwise kernel of the convolution module


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """True where a frame is valid: (B,) -> (B, max_len) bool."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class RelPositionalEncoding(nn.Module):
    """Scales x by sqrt(d) and returns the first T rows of a sinusoid table (the table is a persistent buffer)."""

    def __init__(self, d_model: int, max_len: int = POS_ENC_MAX_LEN) -> None:
        super().__init__()
        self.xscale = math.sqrt(d_model)
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))  # (1, max_len, d) -- persistent: the official file has it

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = x.size(1)
        if t >= self.pe.size(1):
            raise ValueError(
                f"conditioning clip too long: {t} frames after subsampling, the encoder supports < {self.pe.size(1)}"
                " (cut prompts to 15 s like the official inference)"
            )
        return x * self.xscale, self.pe[:, :t].to(x.dtype)  # (B, T, d), (1, T, d)


class Conv2dSubsampling2(nn.Module):
    """Conv2d(1->d, k3, s2) + ReLU over (time, feature), flatten, Linear -> d; halves the frame rate."""

    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(odim * ((idim - 1) // 2), odim))
        self.pos_enc = RelPositionalEncoding(odim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # (B, d, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))  # (B, T', d)
        x, pos_emb = self.pos_enc(x)
        return x, pos_emb, mask[:, :, 2::2]  # the mask frame aligned with each output frame


class RelPositionAttention(nn.Module):
    """Transformer-XL style self-attention without rel_shift (as the official encoder):
    score = ((q + u) k^T + (q + v) p^T) / sqrt(d_k); padded keys get probability 0."""

    def __init__(self, n_head: int, n_feat: int) -> None:
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(n_head, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)  # (B, T, H, dk)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)  # (B, H, T, dk)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)  # (1, H, T, dk)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, T, dk)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.d_k)  # (B, H, T, T)
        pad = ~mask.unsqueeze(1)  # (B, 1, 1, T): True = padded key
        attn = torch.softmax(scores.masked_fill(pad, float("-inf")), dim=-1).masked_fill(pad, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(b, t, self.h * self.d_k)  # (B, T, d)
        return self.linear_out(out)


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm, SiLU, pointwise conv; padded frames zeroed around it."""

    def __init__(self, channels: int, kernel_size: int = CONV_KERNEL) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pad = ~mask  # (B, 1, T)
        x = x.transpose(1, 2).masked_fill(pad, 0.0)  # (B, d, T): padding must not leak through the conv
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).masked_fill(pad, 0.0)
        return x.transpose(1, 2)  # (B, T, d)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm block: x += MHSA(LN x); x += Conv(LN x); x += FF(LN x); x = LN x."""

    def __init__(self, size: int, heads: int, linear_units: int) -> None:
        super().__init__()
        # Registration order = official state-dict order.
        self.self_attn = RelPositionAttention(heads, size)
        self.feed_forward = FeedForward(size, linear_units)
        self.conv_module = ConvolutionModule(size)
        self.norm_ff = nn.LayerNorm(size)
        self.norm_mha = nn.LayerNorm(size)
        self.norm_conv = nn.LayerNorm(size)
        self.norm_final = nn.LayerNorm(size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), mask, pos_emb)
        x = x + self.conv_module(self.norm_conv(x), mask)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """(B, T, input_dim) features + lengths -> (B, T', output_size) states and their (B, 1, T') validity mask,
    T' = (T - 1) // 2."""

    def __init__(self, input_dim: int, cfg: ConformerConfig) -> None:
        super().__init__()
        d = cfg.output_size
        self.embed = Conv2dSubsampling2(input_dim, d)
        self.after_norm = nn.LayerNorm(d)
        self.encoders = nn.ModuleList(
            ConformerBlock(d, cfg.attention_heads, cfg.linear_units) for _ in range(cfg.num_blocks)
        )

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = lengths_to_mask(lengths, xs.size(1)).unsqueeze(1)  # (B, 1, T)
        xs, pos_emb, mask = self.embed(xs, mask)  # (B, T', d), (1, T', d), (B, 1, T')
        for layer in self.encoders:
            xs = layer(xs, mask, pos_emb)
        return self.after_norm(xs), mask
