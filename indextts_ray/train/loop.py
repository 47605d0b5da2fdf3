"""The one training loop for all stages, run on every Ray Train worker.

Reads top to bottom: config -> model (init / freeze / FSDP shard) -> optimizer, schedule, AMP -> restore -> data
plan -> for each step: micro-batches (no gradient sync on all but the last) -> clip -> step -> log -> eval ->
checkpoint.
Stages differ only in `cfg.train` (frozen modules, lr, loss weights, init checkpoint, data subset).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from indextts_ray.config import Config, config_hash
from indextts_ray.data.bucketing import RankSchedule
from indextts_ray.data.ingest import check_same_data, data_fingerprint, get_planner, micro_batches
from indextts_ray.data.mixing import DatasetMeter
from indextts_ray.data.speakers import load_speaker_mapping
from indextts_ray.errors import UserError
from indextts_ray.io_utils import atomic_write_json
from indextts_ray.model.checkpoint_io import export_checkpoint, load_init_checkpoint
from indextts_ray.model.flops import flops_per_token, gpt_seq_len
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.collate import batch_ids, collate, padding_of, to_device
from indextts_ray.train.early_stop import EarlyStopping
from indextts_ray.train.ema import EMA
from indextts_ray.train.guard import SpikeGuard, Verdict, discard_step, record_bad_batch, set_base_lrs
from indextts_ray.train.prefetch import Prefetcher
from indextts_ray.train.sharding import full_model, grad_sync, is_sharded, shard_model
from indextts_ray.train.state import Progress, gather_state, load_state, save_state, step_seed
from indextts_ray.train.tracking import Tracker, device_peak_tflops
from indextts_ray.tune.controller import controller_for

log = logging.getLogger("indextts_ray.train")
FINISHED = "finished.json"  # written by rank 0 when the loop ends normally

METRIC_KEYS = ("loss", "text_loss", "mel_loss", "mel_top1", "mel_top5", "speaker_loss", "speaker_acc",
               "emotion_loss", "emotion_acc", "emotion_table_loss")
# training head -> the loss weight that uses it
HEAD_LOSSES = {"speaker_classifier": "speaker", "emotion_classifier": "emotion", "emotion_table": "emotion_table"}


def train_loop_per_worker(config: dict) -> None:
    config = dict(config)
    spec = config.pop("_ingest")  # IngestSpec: files and settings of the data stream, resolved by the driver
    cfg = Config.model_validate(config)
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)

    # ---- model: same init on every rank, then the stage's starting weights and frozen modules
    speaker_to_id = load_speaker_mapping(tc.speaker_mapping).mapping if tc.speaker_mapping else None
    torch.manual_seed(cfg.run.seed)
    model = TrainingModel(cfg.model, n_speakers=len(speaker_to_id or {}))
    resume = ray.train.get_checkpoint()
    if resume is None and tc.init_checkpoint:
        load_init_checkpoint(model, tc.init_checkpoint)
    params = freeze_modules(model, tc)
    if rank == 0:
        report_parameters(params, run_dir)
    model.to(device)
    amp_dtype = resolve_amp(tc.amp, device)
    sharded = tc.scaling.strategy == "fsdp" and world_size > 1
    if sharded:  # in place, before the EMA and the optimizer take the (now sharded) parameters
        shard_model(model, device, world_size, amp_dtype)
    ema = EMA(model, tc.ema) if tc.ema.enabled else None  # average of the trainable weights, for eval/export

    # ---- optimizer, schedule, mixed precision
    optimizer = make_optimizer(model, tc)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    progress = Progress(grl_lambda=tc.grl_lambda, speaker_weight=tc.loss.speaker)
    guard = SpikeGuard(tc.guard, fp16_scaler=scaler.is_enabled())
    stopper = EarlyStopping(tc.early_stopping)

    # ---- data: the run's planner holds the epoch plans (pure functions of data, seed, epoch); this rank streams
    # its plan entries through Ray Data (`get_dataset_shard`) and never opens a shard itself
    planner = get_planner(spec)
    train_shard = ray.train.get_dataset_shard("train")
    mixture_names = list(tc.mixture.names) if tc.mixture is not None else None
    plan_info = ray.get(planner.describe.remote("train", 0))

    global_micro = tc.scaling.max_workers * tc.batch.grad_accum  # micro-batches per optimizer step, all ranks
    grad_accum = accumulation_for(global_micro, world_size)
    steps_per_epoch = plan_info["entries"] // global_micro
    total_steps = min(tc.max_steps or math.inf, steps_per_epoch * tc.epochs)
    progress.total_steps = total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc, progress.total_steps))

    if resume is not None:
        with resume.as_directory() as d:
            progress, _ = load_state(Path(d), model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                     ema=ema)
        progress.total_steps = total_steps  # from this config: a raised train.max_steps/epochs trains on
        check_same_data(progress.data or None, spec)
        if progress.guard:  # empty in checkpoints written before the guard existed
            guard.load_state_dict(progress.guard)
        if progress.early_stop:
            stopper.load_state_dict(progress.early_stop)
        if rank == 0:
            log.info("resumed from step %d (epoch %d, position %d)", progress.step, progress.epoch, progress.position)
            if progress.world_size != world_size:
                log_resize(run_dir, progress, world_size, grad_accum)
    progress.world_size, progress.grad_accum = world_size, grad_accum
    progress.data = {"fingerprint": data_fingerprint(spec)}
    band = controller_for(tc)
    if band is not None and band.resume(progress.band) and rank == 0:
        log.info("band control resumed: λ %.3g, speaker weight %.3g", band.grl_lambda, band.speaker_weight)
    if band is not None:
        progress.grl_lambda, progress.speaker_weight = band.grl_lambda, band.speaker_weight
        model.set_grl_lambda(band.grl_lambda)
        amp_dtype = amp_dtype if band.amp_enabled else None
    attempt = [progress.step, world_size]  # identifies this worker group's run in audits (restarts redo steps)
    model.set_grl_lambda(progress.grl_lambda)

    ddp_model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) \
        if world_size > 1 and not sharded else model
    tracker = Tracker(rank, run_dir, cfg.run.name, cfg.model_dump(mode="json"), tc.logging)
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    (run_dir / "workers" / f"rank{rank}.pid").write_text(str(os.getpid()))
    # line-buffered: a worker killed by a node loss must not take unwritten audit lines with it
    audit = open(run_dir / "samples" / f"rank{rank}.jsonl", "a", buffering=1) \
        if _mkdir(run_dir / "samples", tc.logging.sample_ids) else None  # noqa: SIM115
    if rank == 0:
        log.info("train rows %d in %d micro-batches (left out: %s; padding %.1f%%), %d steps/epoch x %d epochs -> %d "
                 "steps; trainable %s; %s over %d ranks", plan_info["rows"], plan_info["entries"],
                 plan_info["left_out"] or "none", 100 * plan_info["padding"], steps_per_epoch, tc.epochs,
                 progress.total_steps, f"{params['trainable']:,}", "fsdp" if sharded else "ddp", world_size)
        if mixture_names is not None:
            log.info("mixture rows per epoch: %s", dict(zip(mixture_names, plan_info["datasets"])))
    meter = DatasetMeter(mixture_names) if mixture_names is not None else None
    peak = device_peak_tflops(device, tc.logging.peak_tflops)
    last_ckpt = time.monotonic()

    # ---- the loop
    while progress.step < progress.total_steps and progress.epoch < tc.epochs and not stopper.stopped:
        n_entries = ray.get(planner.n_entries.remote("train", progress.epoch))
        schedule = RankSchedule(n_entries, world_size, rank, grad_accum, progress.position)
        steps_here = min(schedule.steps_left, progress.total_steps - progress.step)
        # this rank's entries of the epoch, in order, from the resume position: the stream serves exactly these
        ray.get(planner.set_cursor.remote("train", rank, progress.epoch,
                                          [j for i in range(steps_here) for j in schedule.micro_batches(i)]))
        stream = micro_batches(train_shard)
        # rows per dataset this epoch (mixture logs): the part before the resume position is counted on rank 0 only
        epoch_rows = np.asarray(ray.get(planner.rows_per_dataset.remote("train", progress.epoch, progress.position))
                                if rank == 0 else np.zeros(len(mixture_names or [0])), dtype=np.int64)

        def next_step(i: int, stream=stream, schedule=schedule):
            out = []
            for j in schedule.micro_batches(i):
                t = next(stream)
                if int(t.column("entry")[0].as_py()) != j:  # the stream must serve the cursor, in order
                    raise RuntimeError(f"ingest stream out of order: got plan entry {t.column('entry')[0]}, expected {j}")
                out.append((collate(t, speaker_to_id), batch_ids(t), padding_of(t), int(t.column("dataset")[0].as_py()),
                            j))
            return out

        prefetch = Prefetcher(next_step, steps_here)
        window = _Window()
        for i in range(steps_here):
            t0 = time.perf_counter()
            batches = prefetch.get(i)
            t_data = time.perf_counter() - t0
            lr = scheduler.get_last_lr()[0]
            ddp_model.train()
            weights = tc.loss.model_copy(update={"speaker": progress.speaker_weight})
            step_lambda = progress.grl_lambda  # the values this step trains with (band control may change them)
            sums: dict[str, float] = {}
            step_flops = 0.0
            micro_losses = []
            for k, (batch, _ids, pad, dataset, j) in enumerate(batches):
                # seeded by the batch's place in the epoch plan, not by (rank, micro-step): the same batch gets
                # the same dropout whatever the world size, so an elastic run reproduces a fixed-size one
                torch.manual_seed(step_seed(cfg.run.seed, progress.epoch, j))
                batch = to_device(batch, device)
                last = k == len(batches) - 1
                sync = grad_sync(ddp_model, last or world_size == 1)
                with sync, torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = ddp_model(batch, weights)
                    scaler.scale(out["loss"] / len(batches)).backward()
                if audit is not None:
                    # position (data consumed this epoch) is unique per step even when a skipped step and the
                    # next one share a step number
                    audit.write(json.dumps({"attempt": attempt, "epoch": progress.epoch, "step": progress.step,
                                            "position": progress.position, "rank": rank, "micro": k,
                                            "ids": _ids}) + "\n")
                for key in METRIC_KEYS:
                    sums[key] = sums.get(key, 0.0) + float(out[key]) / len(batches)
                micro_losses.append(float(out["loss"]))
                if meter is not None:
                    meter.add(dataset, float(out["mel_loss"]), float(out["n_mel_tokens"]))
                    epoch_rows[dataset] += len(_ids)
                tokens = float(out["n_mel_tokens"] + out["n_text_tokens"])
                sums["tokens"] = sums.get("tokens", 0.0) + tokens
                seq = gpt_seq_len(cfg.model, batch["text_ids"].shape[1], batch["codes"].shape[1])
                step_flops += tokens * flops_per_token(cfg.model, seq)
                sums["padding"] = sums.get("padding", 0.0) + pad / len(batches)
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))  # FSDP: of all shards
            # one all-reduce: the step's tokens and FLOPs, and every metric averaged over ranks (the loss every
            # rank must judge the same; logged values that do not depend on how batches are split over ranks)
            keys = sorted(k for k in sums if k != "tokens")
            reduced = _all_sum([sums.pop("tokens"), step_flops, *[sums[k] for k in keys]], device, world_size)
            step_tokens, step_flops = reduced[0], reduced[1]
            sums = {k: v / world_size for k, v in zip(keys, reduced[2:])}
            verdict = guard.check(sums["loss"], grad_norm)
            guard.commit(verdict)
            if not verdict.ok:  # weights, optimizer, LR schedule, scaler and step counter stay as they are
                discard_step(optimizer, scaler)
                record_skip(run_dir, tc, verdict, progress, rank, attempt, batches, micro_losses, guard.consecutive)
                progress.skipped_steps += 1
                progress.position += world_size * grad_accum  # the bad batches are consumed, not learnt
                if guard.needs_reload:
                    reload_last_good(run_dir, model, optimizer, scheduler, scaler, ema, progress, guard, rank,
                                     world_size)
                if i == schedule.steps_left - 1:
                    progress.epoch, progress.position = progress.epoch + 1, 0
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.step += 1
            progress.position += world_size * grad_accum
            if ema is not None:
                ema.update(model, progress.step)
            progress.tokens_seen += int(step_tokens)
            window.add(time.perf_counter() - t0, t_data, step_tokens, step_flops)

            if band is not None and control_step(band, progress, model, sums, rank):
                amp_dtype = amp_dtype if band.amp_enabled else None
                if band.reload_requested:
                    prefetch.close()
                    rollback(run_dir, model, optimizer, scheduler, scaler, progress, rank, ema)
                    break  # the while loop re-plans from the restored epoch/position

            if progress.step % tc.logging.every_steps == 0 or i == steps_here - 1:
                metrics = {**sums, "step": progress.step, "epoch": progress.epoch, "time": time.time(), "lr": lr,
                           "grad_norm": grad_norm, "world_size": world_size, "grad_accum": grad_accum,
                           "grl_lambda": step_lambda, "speaker_weight": weights.speaker, "total_steps": progress.total_steps,
                           **guard.metrics(), **window.rates(peak, world_size)}
                if meter is not None:  # per-dataset loss over the window (all ranks) and samples this epoch
                    metrics.update(meter.metrics(_all_sum(meter.totals(), device, world_size)))
                    rows_so_far = _all_sum(epoch_rows.tolist(), device, world_size)
                    metrics.update({f"mix/{n}/epoch_samples": int(c) for n, c in zip(mixture_names, rows_so_far)})
                tracker.log(metrics, progress.step)
                window = _Window()
            epoch_done = i == schedule.steps_left - 1
            run_done = progress.step >= progress.total_steps
            if epoch_done:  # a checkpoint taken now must resume at the next epoch's start
                progress.epoch, progress.position = progress.epoch + 1, 0
            val = None
            if progress.step % tc.eval_every_steps == 0 or run_done:
                with ema_weights(ema, model, tc.ema.use_for_eval):
                    val = evaluate(model, tc, device, amp_dtype, speaker_to_id, planner, rank, world_size)
                keep_best(model, ema, progress, val, cfg, rank, run_dir)
                stop = stopper.update(progress.step, val[tc.early_stopping.metric])  # same value on every rank
                tracker.log({**val, "step": progress.step}, progress.step, line=False)
                if rank == 0:
                    log.info("step %d | val_loss %.4f | val_top1 %.3f", progress.step, val["val_loss"], val["val_mel_top1"])
                    if stop:
                        log.info("early stopping at step %d: %s did not improve by more than %g for %d evaluations "
                                 "(best %.4f at step %d)", progress.step, tc.early_stopping.metric,
                                 tc.early_stopping.min_delta, tc.early_stopping.patience, stopper.best,
                                 stopper.best_step)
                run_done = run_done or stop
            due = bool(tc.checkpoint.every_minutes) and time.monotonic() - last_ckpt > 60 * tc.checkpoint.every_minutes
            if progress.step % tc.checkpoint.every_steps == 0 or epoch_done or run_done or _agree(due, device, world_size):
                progress.guard, progress.early_stop = guard.state_dict(), stopper.state_dict()
                report_checkpoint(model, optimizer, scheduler, scaler, progress, cfg, rank, val, run_dir, ema)
                last_ckpt = time.monotonic()
            if stopper.stopped:
                break
        prefetch.close()  # stops and joins the reader thread, so the stream can be closed here
        stream.close()
        if steps_here == 0:  # nothing left in this epoch (fewer batches than one global step)
            progress.epoch, progress.position = progress.epoch + 1, 0
    tracker.close()
    if audit is not None:
        audit.close()
    if rank == 0:  # lets a rerun of the same config return at once (the loop would find nothing to do)
        atomic_write_json(run_dir / FINISHED, {"config_hash": config_hash(cfg), "step": progress.step,
                                               "epoch": progress.epoch, "time": time.time()})


def read_finished(run_dir: Path) -> dict | None:
    """The `finished.json` marker of a run that ended (all steps done or stopped early), or None."""
    path = Path(run_dir) / FINISHED
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- helpers


def freeze_modules(model: TrainingModel, tc) -> dict:
    """Freeze the stage's modules (and heads whose loss weight is 0); return what is frozen and trainable."""
    frozen = {}
    for name in tc.freeze:
        module = getattr(model.model, name, None)
        if module is None:
            raise ValueError(f"train.freeze: UnifiedVoice has no module {name!r}")
        for p in module.parameters():
            p.requires_grad_(False)
        frozen[name] = sum(p.numel() for p in module.parameters())
    for head, weight in HEAD_LOSSES.items():
        module = getattr(model.heads, head, None)
        if module is not None and getattr(tc.loss, weight) == 0:  # unused head: keep it out of DDP and AdamW
            for p in module.parameters():
                p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"frozen": frozen, "trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def report_parameters(summary: dict, run_dir: Path) -> None:
    """Print each frozen module and `Trainable: n / total (x %)`; keep the same in <run>/parameters.json."""
    for name, n in summary["frozen"].items():
        log.info("frozen: %s (%s params)", name, f"{n:,}")
    log.info("Trainable: %s / %s (%.2f %%)", f"{summary['trainable']:,}", f"{summary['total']:,}", summary["percent"])
    atomic_write_json(run_dir / "parameters.json", summary)


def control_step(band, progress: Progress, model, sums: dict, rank: int) -> bool:
    """Feed the rank-averaged speaker accuracy and loss to the band controller; apply and log its changes."""
    changes = band.update(progress.step, sums["speaker_acc"], sums["loss"])
    progress.grl_lambda, progress.speaker_weight = band.grl_lambda, band.speaker_weight
    progress.band = band.state_dict()
    model.set_grl_lambda(band.grl_lambda)
    if rank == 0:
        for change in changes:
            log.info("band control: %s", change)
    return bool(changes)


def rollback(run_dir: Path, model, optimizer, scheduler, scaler, progress: Progress, rank: int,
             ema: EMA | None = None) -> None:
    """Reload weights, optimizer and data position of the newest checkpoint, keeping the control state."""
    from indextts_ray.train.export import latest_checkpoint

    keep = {"grl_lambda": progress.grl_lambda, "speaker_weight": progress.speaker_weight, "band": progress.band,
            "rollbacks": progress.rollbacks + 1, "world_size": progress.world_size, "grad_accum": progress.grad_accum}
    try:
        ckpt = latest_checkpoint(run_dir)
    except UserError:  # diverged before the first checkpoint: keep the lowered λ/weight, nothing to reload
        if rank == 0:
            log.warning("divergence before the first checkpoint: continuing with the lowered λ/weight")
        return
    restored, _ = load_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
    for k, v in {**asdict(restored), **keep}.items():
        setattr(progress, k, v)
    model.set_grl_lambda(progress.grl_lambda)
    if rank == 0:
        log.warning("divergence: reloaded %s (step %d), rollback %d", ckpt.name, progress.step, progress.rollbacks)


def accumulation_for(global_micro: int, world_size: int) -> int:
    """Micro-steps per rank so that world_size * accum stays as close as possible to the configured global count."""
    return max(1, round(global_micro / world_size))


def log_resize(run_dir: Path, progress: Progress, world_size: int, grad_accum: int) -> None:
    """Record a world-size change: old -> new size, accumulation, steps redone, wall time lost."""
    from indextts_ray.train.tracking import read_metrics

    logged = read_metrics(run_dir)
    last = max(logged) if logged else progress.step
    lost_s = time.time() - logged[last]["time"] if logged and "time" in logged[last] else None
    event = {"event": "resize", "step": progress.step, "old_world_size": progress.world_size,
             "new_world_size": world_size, "old_grad_accum": progress.grad_accum, "new_grad_accum": grad_accum,
             "lost_steps": max(last - progress.step, 0), "time_lost_s": lost_s, "time": time.time()}
    log.warning("resize: world size %d -> %d, grad_accum %d -> %d, %d steps redone, %s s lost", progress.world_size,
                world_size, progress.grad_accum, grad_accum, event["lost_steps"],
                f"{lost_s:.1f}" if lost_s is not None else "?")
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def make_optimizer(model: torch.nn.Module, tc) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and latents (1-D or embedding tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "latents" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas)


def lr_factor(step: int, tc, total_steps: int) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio`, on optimizer steps."""
    if tc.warmup_steps and step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    span = max(total_steps - tc.warmup_steps, 1)
    t = min(max(step - tc.warmup_steps, 0) / span, 1.0)
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or device.type != "cuda":
        return None  # CPU runs in fp32: the tiny-model tests compare exact numbers
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@torch.no_grad()
def evaluate(model: TrainingModel, tc, device, amp_dtype, speaker_to_id, planner, rank: int, world_size: int) -> dict:
    """Validation over this rank's entries of the validation plan (the same ingest stream as training, prompts
    drawn once); token-weighted means reduced over ranks.

    A sharded model all-gathers in every forward, so all ranks must run the same number of batches: the planner
    balances the validation entries over the ranks; should that ever not hold, every rank raises instead of one
    hanging.
    """
    model.eval()
    ray.get(planner.val_cursor.remote(rank, world_size, tc.val_max_batches))
    lockstep = is_sharded(model)
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # mel_loss*n, top1*n, text_loss*n_text, n, n_text
    batches = micro_batches(ray.train.get_dataset_shard("val"))
    for b in itertools.count():
        table = next(batches, None)
        if lockstep:
            have = _all_sum([float(table is not None)], device, world_size)[0]
            if 0 < have < world_size:
                raise RuntimeError(f"validation batch {b}: only {have:.0f} of {world_size} ranks have one (FSDP needs "
                                   "equal val shards)")
        if table is None:
            break
        batch = to_device(collate(table, speaker_to_id), device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(batch, tc.loss)
        n, nt = float(out["n_mel_tokens"]), float(out["n_text_tokens"])
        totals += torch.tensor([float(out["mel_loss"]) * n, float(out["mel_top1"]) * n,
                                float(out["text_loss"]) * nt, n, nt], dtype=torch.float64, device=device)
    if lockstep:  # FSDP's root keeps its gathered weights after a forward, for a backward that comes in training only
        model.reshard()
    if world_size > 1:
        dist.all_reduce(totals)
    mel, top1, text, n, nt = totals.tolist()
    return {"val_loss": mel / max(n, 1), "val_mel_top1": top1 / max(n, 1), "val_text_loss": text / max(nt, 1)}


def report_checkpoint(model, optimizer, scheduler, scaler, progress: Progress, cfg: Config, rank: int,
                      val: dict | None, run_dir: Path, ema: EMA | None = None) -> None:
    """Every rank calls report (it is a barrier); rank 0 attaches the checkpoint (FSDP: all ranks gather it)."""
    metrics = {"step": progress.step, "epoch": progress.epoch, **(val or {})}
    checkpoint, tmp = None, None
    weights = gather_state(model, optimizer, ema) if rank == 0 or is_sharded(model) else None
    if rank == 0:
        tmp = Path(tempfile.mkdtemp(prefix="ckpt-"))
        save_state(tmp, weights=weights, scheduler=scheduler, scaler=scaler, progress=progress,
                   config=cfg.model_dump(mode="json"))
        checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
    mode = ray.train.CheckpointUploadMode.ASYNC if cfg.train.checkpoint.async_upload else ray.train.CheckpointUploadMode.SYNC
    # Ray deletes the local copy once it is in storage (after the upload when it runs in the background)
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step-{progress.step:08d}",
                     checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=tmp is not None)


def keep_best(model, ema: EMA | None, progress: Progress, val: dict, cfg: Config, rank: int, run_dir: Path) -> None:
    """After every evaluation (not only those that coincide with a checkpoint): a new best val_loss -> `best/`."""
    if val["val_loss"] >= progress.best_val:
        return
    progress.best_val = val["val_loss"]
    sharded = is_sharded(model)
    if rank == 0 or sharded:  # FSDP: every rank swaps in its shard of the average and helps gather the weights
        with ema_weights(ema, model, cfg.train.ema.use_for_eval):  # best/ = the weights that were evaluated
            best = full_model(model) if sharded else model
            if rank == 0:
                _save_best(best, cfg, run_dir)
    if rank == 0:
        with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": "best", "step": progress.step, "val_loss": val["val_loss"],
                                "time": time.time()}) + "\n")


def ema_weights(ema: EMA | None, model, use: bool):
    """The EMA weights in `model` for the `with` body when there is an average and `use`; else no change."""
    return ema.swapped(model) if ema is not None and use else contextlib.nullcontext()


def record_skip(run_dir: Path, tc, verdict: Verdict, progress: Progress, rank: int, attempt: list, batches: list,
                micro_losses: list[float], in_a_row: int) -> None:
    """This rank's sample ids of a skipped step -> <run>/<bad_batches_dir>/rank<r>.jsonl; rank 0 logs it."""
    record_bad_batch(run_dir / tc.guard.bad_batches_dir / f"rank{rank}.jsonl", step=progress.step,
                     ids=[i for _b, ids, _p, _d, _j in batches for i in ids], verdict=verdict, rank=rank,
                     epoch=progress.epoch, position=progress.position, attempt=attempt, micro_losses=micro_losses,
                     micro_sizes=[len(ids) for _b, ids, _p, _d, _j in batches])
    if rank == 0:
        log.warning("step %d: skipped (%s: loss %.4g, grad norm %.4g, limits %s / %s), %d in a row; ids in %s",
                    progress.step, verdict.reason, verdict.loss, verdict.grad_norm, verdict.loss_limit,
                    verdict.grad_limit, in_a_row, run_dir / tc.guard.bad_batches_dir)


def reload_last_good(run_dir: Path, model, optimizer, scheduler, scaler, ema: EMA | None, progress: Progress,
                     guard: SpikeGuard, rank: int, world_size: int) -> None:
    """After `max_consecutive_skips` skips in a row: back to the newest checkpoint with the LR times the factor.

    Unlike `rollback`, the data position is kept, so the batches behind the skips are not replayed; the step
    counter (hence LR schedule and reseeding) goes back to the checkpoint's. Without a checkpoint yet only the
    LR is lowered: skipped steps never changed the weights. Past `max_reloads` this raises DivergenceError.
    """
    from indextts_ray.train.export import latest_checkpoint

    reasons = dict(guard.reasons)
    factor = guard.begin_reload()
    bases = [b * factor for b in scheduler.base_lrs]
    ckpt = None
    if rank == 0:
        try:
            ckpt = str(latest_checkpoint(run_dir))
        except UserError:  # no checkpoint yet
            ckpt = None
    ckpt = _from_rank0(ckpt, world_size)  # the same checkpoint on every rank, even while one is uploading
    if ckpt is not None:
        saved, _ = load_state(Path(ckpt), model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
        progress.step, progress.tokens_seen = saved.step, saved.tokens_seen
    set_base_lrs(optimizer, scheduler, bases)
    if rank == 0:
        event = {"event": "guard_reload", "step": progress.step, "checkpoint": ckpt, "lr_scale": guard.lr_scale,
                 "reloads": guard.reloads, "skip_reasons": reasons, "time": time.time()}
        log.warning("spike guard: %d bad steps in a row -> reloaded %s, learning rate x%g (reload %d of at most %d)",
                    guard.cfg.max_consecutive_skips, ckpt or "nothing (no checkpoint yet)", guard.lr_scale,
                    guard.reloads, guard.cfg.max_reloads)
        with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def _from_rank0(value, world_size: int):
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _save_best(model, cfg: Config, run_dir: Path) -> None:
    """Export the best-by-val weights next to the run (atomic directory swap)."""
    import shutil

    tmp = run_dir / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_checkpoint(model, tmp)
    final = run_dir / "best"
    old = run_dir / ".best.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _mkdir(path: Path, enabled: bool) -> bool:
    if enabled:
        path.mkdir(parents=True, exist_ok=True)
    return enabled


def _all_sum(values: list[float], device, world_size: int) -> list[float]:
    if world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _agree(flag, device, world_size: int) -> bool:
    """Rank 0's decision for time-based events, so every rank checkpoints at the same step."""
    if world_size == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


class _Window:
    """Throughput over the steps since the last log line."""

    def __init__(self):
        self.time = self.data = self.tokens = self.flops = 0.0
        self.steps = 0

    def add(self, step_s: float, data_s: float, tokens: float, flops: float) -> None:
        self.time += step_s
        self.data += data_s
        self.tokens += tokens
        self.flops += flops  # model FLOPs of the step's real tokens at each batch's padded GPT length
        self.steps += 1

    def rates(self, peak_tflops: float | None, world_size: int) -> dict:
        tps = self.tokens / self.time if self.time else 0.0
        mfu = self.flops / self.time / (peak_tflops * 1e12 * world_size) if peak_tflops and self.time else None
        return {"tokens_per_s": tps, "mfu": mfu, "data_wait": self.data / self.time if self.time else 0.0,
                "step_ms": 1000 * self.time / max(self.steps, 1)}
