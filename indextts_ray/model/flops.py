"""Training FLOPs per target token for MFU (PaLM appendix B: 6N + 12·L·d·T).

N counts the matmul weights one sequence position goes through: the GPT-2 blocks, and one output head
(mel_head: nearly all targets are codes). Embedding lookups are free and excluded, as in PaLM/nanoGPT.
The conditioning conformers/perceivers run once per clip on the prompt frames, not per token, and are not
counted, so MFU computed from this is the GPT's (a slight underestimate of the machine's real use).
The attention term uses the full T x T score matrix (PaLM convention, no causal discount).
"""

from __future__ import annotations

from indextts_ray.model.config import ModelConfig


def gpt_seq_len(cfg: ModelConfig, text_len: int, mel_len: int) -> int:
    """GPT sequence length for a batch padded to `text_len` text ids and `mel_len` codes."""
    return cfg.conditioning_positions + (text_len + 2) + (mel_len + 2)


def gpt_matmul_params(cfg: ModelConfig) -> int:
    """Weights of the matmuls per position: 12·d² per block (qkv 3d², proj d², mlp 8d²) plus mel_head."""
    d = cfg.model_dim
    return cfg.layers * 12 * d * d + d * cfg.number_mel_codes


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward + backward FLOPs per trained token.

    Args:
        cfg: the model architecture.
        seq_len: GPT sequence length (`gpt_seq_len`); default the longest possible sequence
            (34 + 602 + 1818 for the official config), an upper bound. Pass the batch's padded length
            for an accurate attention term.
    """
    if seq_len is None:
        seq_len = gpt_seq_len(cfg, cfg.max_text_tokens, cfg.max_mel_tokens + cfg.max_conditioning_inputs)
    return float(6 * gpt_matmul_params(cfg) + 12 * cfg.layers * cfg.model_dim * seq_len)
