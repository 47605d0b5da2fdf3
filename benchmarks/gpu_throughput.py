"""GPU training throughput of the official UnifiedVoice v2 config, and AMP sanity checks.

    python benchmarks/gpu_throughput.py [--memory-gb 24] [--steps 10]

1. AMP checks on the tiny model: bf16 autocast and fp16 autocast + GradScaler each train a fixed batch for
   40 steps; loss must fall, stay finite, and the GradScaler scale must stay finite.
2. Throughput: the official 866M config (activation checkpointing, bf16 autocast, AdamW, grad clip), GPU memory
   capped at `--memory-gb` (24 = an RTX 4090) with `torch.cuda.set_per_process_memory_fraction`; batches of
   10 s utterances (500 codes, 100 text tokens, a 6 s prompt of 1024-d features); the largest batch that fits
   is timed. Prints tokens/s (non-padding targets) and MFU against the card's dense bf16 peak.
Needs a CUDA GPU; prints the device name with every number.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indextts_ray.config import load_config  # noqa: E402
from indextts_ray.model.config import LossWeights  # noqa: E402
from indextts_ray.model.flops import flops_per_token, gpt_seq_len  # noqa: E402
from indextts_ray.model.training import TrainingModel  # noqa: E402
from indextts_ray.train.tracking import PEAK_TFLOPS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_batch(cfg, b: int, text: int, codes: int, frames: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    n_codes = cfg.start_mel_token
    return {
        "text_ids": torch.randint(2, cfg.number_text_tokens, (b, text), generator=g).to(device),
        "text_lengths": torch.full((b,), text).to(device),
        "codes": torch.randint(0, n_codes, (b, codes), generator=g).to(device),
        "code_lengths": torch.full((b,), codes).to(device),
        "spk_feats": torch.randn(b, frames, cfg.input_dim, generator=g).to(device),
        "spk_lengths": torch.full((b,), frames).to(device),
    }


def amp_check(device) -> None:
    cfg = load_config(REPO / "configs/model/tiny.yaml")
    weights = LossWeights(text=0.01, mel=1.0, speaker=0.0)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        torch.manual_seed(0)
        model = TrainingModel(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        batch = make_batch(cfg, 8, 12, 40, 30, device)
        losses = []
        for _ in range(40):
            with torch.autocast("cuda", dtype=dtype):
                out = model(batch, weights)
            scaler.scale(out["loss"]).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(float(out["mel_loss"]))
        ok = all(map(lambda x: x == x and x < 1e4, losses)) and losses[-1] < 0.5 * losses[0]
        print(f"amp {name}: mel_loss {losses[0]:.3f} -> {losses[-1]:.3f}, scale {scaler.get_scale():.0f} "
              f"{'OK' if ok else 'FAIL'}", flush=True)


def try_batch(model, opt, cfg, b: int, device, steps: int) -> dict | None:
    text, codes, frames = 100, 500, 300
    weights = LossWeights(text=0.01, mel=1.0, speaker=0.0)
    try:
        batch = make_batch(cfg, b, text, codes, frames, device)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(steps + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(batch, weights)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i >= 3:  # warm-up excluded
                times.append(time.perf_counter() - t0)
        tokens = float(out["n_mel_tokens"] + out["n_text_tokens"])
        step = sum(times) / len(times)
        flops = tokens * flops_per_token(cfg, gpt_seq_len(cfg, text, codes))
        return {"batch": b, "step_s": step, "tokens_per_s": tokens / step, "flops_per_s": flops / step,
                "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
    except torch.OutOfMemoryError:
        opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return None


def throughput(device, memory_gb: float, steps: int) -> None:
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(memory_gb / total, 1.0), device)
    cfg = load_config(REPO / "configs/model/indextts2.yaml").model_copy(update={"checkpointing": True})
    model = TrainingModel(cfg).to(device)
    model.heads.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    best = None
    for b in (1, 2, 4, 6, 8, 12, 16, 24):
        r = try_batch(model, opt, cfg, b, device, steps)
        if r is None:
            print(f"batch {b}: out of memory within {memory_gb:.0f} GB", flush=True)
            break
        mfu = r["flops_per_s"] / (peak * 1e12) if peak else float("nan")
        print(f"[{name}, {memory_gb:.0f} GB cap] official 866M, bf16, act. ckpt | batch {b} x 10 s | "
              f"tok/s {r['tokens_per_s']:,.0f} | mfu {mfu * 100:.1f}% | {r['step_s'] * 1000:.0f}ms | "
              f"mem {r['peak_mem_gb']:.1f}GB", flush=True)
        best = r
    if best:
        print(f"largest batch within {memory_gb:.0f} GB: {best['batch']} -> {best['tokens_per_s']:,.0f} tok/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory-gb", type=float, default=24.0)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    amp_check(device)
    throughput(device, args.memory_gb, args.steps)


if __name__ == "__main__":
    main()
