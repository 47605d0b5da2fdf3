"""Sampling sanity: generate codes for a few held-out prompts and compare them with the reference codes.

A model that learned to end its utterances emits the stop token (stop rate near 1) after about as many codes
as the real recording has (length ratio near 1). Each item may generate at most `ratio_cap` times its
reference length, so a model that never stops costs bounded time and shows up as stop rate 0.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

from indextts_ray.eval.generate import SamplingConfig, build_conditioning, generate_codes, resolve_emovec
from indextts_ray.model.unifiedvoice import UnifiedVoice
from indextts_ray.train.collate import collate, to_device

# The official infer_v2 defaults without beam search and repetition penalty (neither is implemented here).
DEFAULT_SETTINGS: dict[str, SamplingConfig] = {
    "greedy": SamplingConfig(),
    "top_p": SamplingConfig(do_sample=True, temperature=0.8, top_k=30, top_p=0.8),
}


@torch.no_grad()
def sampling_sanity(
    model: UnifiedVoice,
    rows: pa.Table,
    device: torch.device,
    settings: dict[str, SamplingConfig] | None = None,
    ratio_cap: float = 3.0,
) -> dict[str, dict]:
    """Per setting: n, stop_rate, length_ratio_mean / _median (generated / reference codes), mean_codes.

    Each row is generated with its own speaker prompt and emotion reference (as in training), in one batch.
    """
    if len(rows) == 0:
        return {}
    batch = to_device(collate(rows), device)
    emo_vec = resolve_emovec(model, batch["spk_feats"], batch["spk_lengths"],
                             batch.get("emo_feats"), batch.get("emo_lengths"))
    conds = build_conditioning(model, batch["spk_feats"], batch["spk_lengths"], emo_vec)
    ref = batch["code_lengths"]
    limits = torch.tensor([math.ceil(ratio_cap * int(n)) for n in ref.tolist()], device=device).clamp(min=1)
    out = {}
    for name, sampling in (settings or DEFAULT_SETTINGS).items():
        gen = generate_codes(model, conds, batch["text_ids"], batch["text_lengths"], sampling, item_limits=limits)
        ratio = gen.lengths.float().cpu().numpy() / ref.clamp(min=1).float().cpu().numpy()
        out[name] = {
            "n": len(rows),
            "stop_rate": float(gen.stopped.float().mean()),
            "length_ratio_mean": float(np.mean(ratio)),
            "length_ratio_median": float(np.median(ratio)),
            "mean_codes": float(gen.lengths.float().mean()),
        }
    return out
