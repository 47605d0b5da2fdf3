"""Forward+backward speed of our GPT-2 stack vs `transformers.GPT2Model` (what the official code runs), same weights.

    .venv/bin/python benchmarks/model_speed.py                      # mid-size config on CPU
    .venv/bin/python benchmarks/model_speed.py --device cuda --dim 1280 --layers 24 --heads 20 --batch 8 --seq 1024
    .venv/bin/python benchmarks/model_speed.py --full --config indextts2 --device cuda --amp bf16   # whole step

The reference is built exactly like the official `build_hf_gpt_transformer` (wte deleted, wpe returning zeros,
inputs_embeds in) and gets our weights through a strict `load_state_dict` (the key layouts are identical).
Both run in train mode with the same dropout and without activation checkpointing (unless --checkpointing);
timing excludes warm-up iterations. Target: ours / reference <= 0.8.

`--full` instead times one whole `TrainingModel` forward+backward (conditioning encoders, GPT, all losses)
on a random batch and prints tokens/s (non-pad targets) and MFU from `model/flops.py`.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import torch

from indextts_ray.model.gpt2 import GPT2Stack


def null_position_embeddings(pos: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.zeros((pos.shape[0], pos.shape[1], dim), device=pos.device)


def build_reference(ours: GPT2Stack, dim: int, layers: int, heads: int, seq: int, dropout: float, ckpt: bool):
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=256, n_positions=seq, n_ctx=seq, n_embd=dim, n_layer=layers, n_head=heads,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, use_cache=False)  # fmt: skip
    cfg._attn_implementation = "sdpa"
    ref = GPT2Model(cfg)
    del ref.wpe
    ref.wpe = functools.partial(null_position_embeddings, dim=dim)  # as the official build
    del ref.wte
    ref.load_state_dict(ours.state_dict(), strict=True)
    if ckpt:
        ref.gradient_checkpointing_enable()
    return ref


def step_times(fns: list, x: torch.Tensor, warmup: int, iters: int, sync, amp: torch.dtype | None) -> list[float]:
    """Median seconds of one forward+backward (loss = mean square of the output) for each fn. The fns take
    turns every iteration, so a change in machine load hits all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + iters):
        for fn, ts in zip(fns, times):
            sync()
            t0 = time.perf_counter()
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                out = fn(x)
            out.float().pow(2).mean().backward()
            sync()
            if i >= warmup:
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU


def full_step(args, device: torch.device, sync, amp: torch.dtype | None) -> None:
    """Time TrainingModel.forward + backward for the model config `args.config` on a random batch."""
    from indextts_ray.config import CONFIGS_DIR, load_config
    from indextts_ray.model import LossWeights, TrainingModel
    from indextts_ray.model.config import ModelConfig
    from indextts_ray.model.flops import flops_per_token, gpt_seq_len

    cfg = load_config(CONFIGS_DIR / "model" / f"{args.config}.yaml", schema=ModelConfig)
    if args.checkpointing:
        cfg = cfg.model_copy(update={"checkpointing": True})
    torch.manual_seed(0)
    tm = TrainingModel(cfg, n_speakers=500).to(device).train()
    b, t, m, f = args.batch, args.text_len, args.seq, args.cond_frames
    g = torch.Generator().manual_seed(0)
    batch = {
        "text_ids": torch.randint(2, cfg.number_text_tokens, (b, t), generator=g),
        "text_lengths": torch.randint(t // 2, t + 1, (b,), generator=g),
        "codes": torch.randint(0, cfg.number_mel_codes - 2, (b, m), generator=g),
        "code_lengths": torch.randint(m // 2, m + 1, (b,), generator=g),
        "spk_feats": torch.randn(b, f, cfg.input_dim, generator=g),
        "spk_lengths": torch.randint(f // 2, f + 1, (b,), generator=g),
        "speaker_ids": torch.randint(0, 500, (b,), generator=g),
        "emotion_ids": torch.randint(0, len(cfg.emotion_labels), (b,), generator=g),
    }
    batch["emotion_ids"][::2] = -100  # half of the clips unlabelled
    batch = {k: v.to(device) for k, v in batch.items()}
    weights = LossWeights(text=0.01, mel=1.0, speaker=0.1, emotion=0.1, emotion_table=1.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for i in range(args.warmup + args.iters):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = tm(batch, weights)
        out["loss"].backward()
        tm.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    tokens = int(out["n_mel_tokens"]) + int(out["n_text_tokens"])
    fpt = flops_per_token(cfg, gpt_seq_len(cfg, t, m))
    achieved = fpt * tokens / step / 1e12
    name = device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(f"device {name} | torch {torch.__version__} | config {args.config} | amp {args.amp} "
          f"| checkpointing {cfg.checkpointing}")  # fmt: skip
    print(f"batch {b} x (text {t}, codes {m}, cond frames {f}) | losses " +
          " ".join(f"{k} {out[k].item():.3f}" for k in ("mel_loss", "text_loss", "speaker_loss", "emotion_loss")))
    print(f"step {step * 1e3:.0f} ms | tok/s {tokens / step:,.0f} | {achieved:.1f} TFLOP/s (GPT)"
          + (f" | mfu {100 * achieved / peak:.1f}%" if peak else "") + f" | mem {mem:.1f}GB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0 = torch default)")
    p.add_argument("--full", action="store_true", help="time a whole TrainingModel step instead")
    p.add_argument("--config", default="tiny", help="--full: configs/model/<name>.yaml")
    p.add_argument("--text-len", type=int, default=100, help="--full: padded text length")
    p.add_argument("--cond-frames", type=int, default=400, help="--full: padded conditioning frames")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.full:
        full_step(args, device, sync, amp)
        return

    torch.manual_seed(0)
    ours = GPT2Stack(args.dim, args.layers, args.heads, args.dropout, args.checkpointing).to(device).train()
    ref = build_reference(ours, args.dim, args.layers, args.heads, args.seq, args.dropout, args.checkpointing)
    ref = ref.to(device).train()
    x = torch.randn(args.batch, args.seq, args.dim, device=device, requires_grad=True)

    with torch.no_grad():  # same function: compare in eval mode (no dropout)
        ours.eval(), ref.eval()
        diff = (ours(x) - ref(inputs_embeds=x).last_hidden_state).abs().max().item()
        ours.train(), ref.train()

    t_ref, t_ours = step_times(
        [lambda v: ref(inputs_embeds=v).last_hidden_state, ours], x, args.warmup, args.iters, sync, amp
    )
    tokens = args.batch * args.seq
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"device {device_name(device)} | torch {torch.__version__}")
    print(f"config dim {args.dim} layers {args.layers} heads {args.heads} | batch {args.batch} x seq {args.seq} "
          f"| params {n_params:,} | dropout {args.dropout} | checkpointing {args.checkpointing} | amp {args.amp}")  # fmt: skip
    print(f"max |ours - reference| (eval) {diff:.2e}")
    print(f"reference (transformers.GPT2Model) fwd+bwd {t_ref * 1e3:.1f} ms | tok/s {tokens / t_ref:,.0f}")
    print(f"ours (indextts_ray GPT2Stack)      fwd+bwd {t_ours * 1e3:.1f} ms | tok/s {tokens / t_ours:,.0f}")
    print(f"ratio ours/reference {t_ours / t_ref:.3f} (target <= 0.8)")


if __name__ == "__main__":
    main()
