"""The one training recipe for all stages, run on every Ray Train worker.

`train_loop_per_worker(config)` is the Ray Train entry point (the CLI, jobs and Tune reach it through
`train/trainer.py`); it builds a `Recipe` and runs it:

    setup_model       same init on every rank, the stage's starting weights, frozen modules, FSDP shard, EMA
    setup_optimizer   AdamW, warmup + cosine on optimizer steps, GradScaler, spike guard, early stopping
    setup_data        the run's planner (epoch plans) and this rank's Ray Data stream; steps per epoch
    restore           the last registered checkpoint: weights, optimizer, schedule, scaler, `RunState`
    setup_adversary   GRL λ and speaker-loss weight: the band controller's (Stage 2) or the config's
    train             one stream across epochs (`open_stream`); per step: micro-batches -> optimizer step (or a
                      guard skip) -> band control -> log -> validate -> checkpoint

Stages differ only in `cfg.train` (frozen modules, lr, loss weights, init checkpoint, data subset). Everything
that must survive a restart is the `RunState` (train/state.py), saved whole with every checkpoint.

Features, their flags, and what raises:
  spike guard (`train.guard.*`): skips a spiking step; `max_consecutive_skips` in a row -> `rollback`; more than
      `max_reloads` reloads raise guard.DivergenceError.
  band control (`train.band.*`, Stage 2): moves λ/weight; a divergence -> `rollback` with the data position;
      more than `max_divergences` raise band.DivergenceError.
  EMA (`train.ema.*`), early stopping (`train.early_stopping.*`), best export (`<run>/best`, every validation).
  resume: a checkpoint of other data raises DataError (the driver refuses it first, with changed plan settings).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from indextts_ray import storage
from indextts_ray.config import Config, config_hash
from indextts_ray.data.bucketing import rank_steps
from indextts_ray.data.ingest import check_same_data, data_fingerprint, get_planner, micro_batches
from indextts_ray.data.mixing import DatasetMeter
from indextts_ray.data.speakers import load_speaker_mapping
from indextts_ray.errors import UserError
from indextts_ray.io_utils import atomic_write_json
from indextts_ray.model.checkpoint_io import export_checkpoint, load_init_checkpoint
from indextts_ray.model.flops import flops_per_token, gpt_seq_len
from indextts_ray.model.training import TrainingModel
from indextts_ray.train.band import BandController, controller_for
from indextts_ray.train.collate import batch_ids, collate, padding_of, to_device
from indextts_ray.train.early_stop import EarlyStopping
from indextts_ray.train.ema import EMA
from indextts_ray.train.guard import SpikeGuard, Verdict, discard_step, record_bad_batch, set_base_lrs
from indextts_ray.train.prefetch import Prefetcher
from indextts_ray.train.run_files import RunMirror, checkpoint_files, local_dir
from indextts_ray.train.sharding import full_model, grad_sync, is_sharded, shard_model
from indextts_ray.train.state import RunState, gather_state, load_state, save_state, step_seed
from indextts_ray.train.tracking import Tracker, device_peak_tflops, read_metrics
from indextts_ray.train.validation import validation_metrics, validation_sums

log = logging.getLogger("indextts_ray.train")
FINISHED = "finished.json"  # written by rank 0 when the loop ends normally

METRIC_KEYS = ("loss", "text_loss", "mel_loss", "mel_top1", "mel_top5", "stop_loss", "speaker_loss", "speaker_acc",
               "emotion_loss", "emotion_acc", "emotion_table_loss")
# training head -> the loss weight that uses it
HEAD_LOSSES = {"speaker_classifier": "speaker", "emotion_classifier": "emotion", "emotion_table": "emotion_table"}
LM_HEAD_LOSSES = {"text_head": "text", "mel_head": "mel"}  # UnifiedVoice's output heads
_READ_KEYS = tuple(dict.fromkeys((*METRIC_KEYS, "loss", "n_mel_tokens", "n_text_tokens")))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: one stage on this worker (`config`: the resolved config + `_ingest`, the spec)."""
    config = dict(config)
    spec = config.pop("_ingest")  # IngestSpec: files and settings of the data stream, resolved by the driver
    recipe = Recipe(Config.model_validate(config), spec)
    recipe.setup()
    recipe.train()
    recipe.cleanup()


@dataclass
class Step:
    """One optimizer step's outcome, before the optimizer acts on it."""

    metrics: dict  # METRIC_KEYS + padding, averaged over micro-batches and ranks
    tokens: float  # non-padding targets, all ranks
    flops: float
    grad_norm: float
    lr: float  # the learning rate this step trains with
    grl_lambda: float
    speaker_weight: float
    batches: list  # (batch, ids, padding, dataset, plan entry) per micro-batch of this rank
    micro_losses: list[float]


class Recipe:
    """One stage of training on one Ray Train worker (module doc: the setup order, the loop, the features)."""

    def __init__(self, cfg: Config, spec):
        self.cfg, self.tc, self.spec = cfg, cfg.train, spec
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        # the run lives at run_loc (a folder, or a URI whose checkpoints Ray uploads); side files go to run_dir,
        # the same folder or this node's mirror of a remote run (train/run_files.py)
        self.run_loc = storage.join(cfg.run.output_dir, cfg.run.name)
        self.run_dir = local_dir(self.run_loc)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mirror = RunMirror(self.run_loc, self.rank)
        self.mirror.pull()
        self.resume_from = ray.train.get_checkpoint()
        self.state = RunState(grl_lambda=self.tc.grl_lambda, speaker_weight=self.tc.loss.speaker)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)

    def setup(self) -> None:
        self.setup_model()
        self.setup_optimizer()
        self.setup_data()
        self.restore()
        self.setup_adversary()
        self.setup_logging()

    # ---------------------------------------------------------------- setup

    def setup_model(self) -> None:
        """Same init on every rank, then the stage's starting weights and frozen modules; FSDP shard; EMA."""
        tc = self.tc
        # inputs on an object store are read from a local copy (storage.cached_copy: once per node and object)
        self.speaker_to_id = load_speaker_mapping(storage.cached_copy(tc.speaker_mapping)).mapping \
            if tc.speaker_mapping else None
        torch.manual_seed(self.cfg.run.seed)
        self.model = TrainingModel(self.cfg.model, n_speakers=len(self.speaker_to_id or {}))
        if self.resume_from is None and tc.init_checkpoint:
            load_init_checkpoint(self.model, storage.cached_copy(tc.init_checkpoint))
        self.params = freeze_modules(self.model, tc)
        if self.rank == 0:
            report_parameters(self.params, self.run_dir)
        self.model.to(self.device)
        self.amp_dtype = resolve_amp(tc.amp, self.device)
        self.sharded = tc.scaling.strategy == "fsdp" and self.world_size > 1
        if self.sharded:  # in place, before the EMA and the optimizer take the (now sharded) parameters
            shard_model(self.model, self.device, self.world_size, self.amp_dtype)
        self.ema = EMA(self.model, tc.ema) if tc.ema.enabled else None  # average of the trainable weights

    def setup_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.model, self.tc)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.guard = SpikeGuard(self.tc.guard, fp16_scaler=self.scaler.is_enabled())
        self.stopper = EarlyStopping(self.tc.early_stopping)

    def setup_data(self) -> None:
        """The run's planner holds the epoch plans (pure functions of data, seed, epoch); this rank streams its
        plan entries through Ray Data (`get_dataset_shard`) and never opens a shard itself."""
        tc = self.tc
        self.planner = get_planner(self.spec)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.mixture_names = list(tc.mixture.names) if tc.mixture is not None else None
        self.plan_info = ray.get(self.planner.describe.remote("train", 0))
        global_micro = tc.scaling.max_workers * tc.batch.grad_accum  # micro-batches per optimizer step, all ranks
        self.grad_accum = accumulation_for(global_micro, self.world_size)
        self.steps_per_epoch = self.plan_info["entries"] // global_micro
        # from this config, also on resume: a raised train.max_steps/epochs trains on
        self.state.total_steps = min(tc.max_steps or math.inf, self.steps_per_epoch * tc.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc, self.state.total_steps))

    def restore(self) -> None:
        """Continue from the last registered checkpoint (the driver already refused one of other data or plan)."""
        if self.resume_from is not None:
            with checkpoint_files(self.resume_from) as d:
                saved, saved_cfg = load_state(d, model=self.model, optimizer=self.optimizer,
                                              scheduler=self.scheduler, scaler=self.scaler, ema=self.ema)
            check_same_data(saved.data or None, self.spec)
            if saved.guard:  # empty in checkpoints written before the guard existed
                self.guard.load_state_dict(saved.guard)
            if saved.early_stop:
                self.stopper.load_state_dict(saved.early_stop)
            saved.total_steps = self.state.total_steps
            self.state = saved
            changed = apply_optimizer_settings(self.optimizer, self.scheduler, saved_cfg["train"], self.tc)
            if self.rank == 0:
                log.info("resumed from step %d (epoch %d, position %d)", saved.step, saved.epoch, saved.position)
                for line in changed:
                    log.info("resume: %s", line)
                if saved.world_size != self.world_size:
                    log_resize(self.run_dir, saved, self.world_size, self.grad_accum)
        self.state.world_size, self.state.grad_accum = self.world_size, self.grad_accum
        self.state.data = {"fingerprint": data_fingerprint(self.spec)}

    def setup_adversary(self) -> None:
        """GRL λ and speaker-loss weight into the run state: the band controller's (Stage 2) or the config's."""
        self.band = controller_for(self.tc)
        notes = resolve_adversary(self.state, self.tc, self.band, resumed=self.resume_from is not None)
        if self.rank == 0:
            for line in notes:
                log.info("%s", line)
        if self.band is not None and not self.band.amp_enabled:
            self.amp_dtype = None

    def setup_logging(self) -> None:
        tc, rank = self.tc, self.rank
        self.attempt = [self.state.step, self.world_size]  # this worker group's run in audits (restarts redo steps)
        # every trainable parameter gets a gradient each step (freeze_modules), so DDP skips the unused-parameter
        # search (a graph walk per step, and a warning in every worker log)
        self.ddp_model = ray.train.torch.prepare_model(self.model, parallel_strategy_kwargs={
            "find_unused_parameters": False}) if self.world_size > 1 and not self.sharded else self.model
        self.tracker = Tracker(rank, self.run_dir, self.cfg.run.name, self.cfg.model_dump(mode="json"), tc.logging)
        (self.run_dir / "workers").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "workers" / f"rank{rank}.pid").write_text(str(os.getpid()))
        # line-buffered: a worker killed by a node loss must not take unwritten audit lines with it
        self.audit = open(self.run_dir / "samples" / f"rank{rank}.jsonl", "a", buffering=1) \
            if _mkdir(self.run_dir / "samples", tc.logging.sample_ids) else None  # noqa: SIM115
        info = self.plan_info
        if rank == 0:
            log.info("train rows %d in %d micro-batches (left out: %s; padding %.1f%%), %d steps/epoch x %d epochs -> "
                     "%d steps; trainable %s; %s over %d ranks", info["rows"], info["entries"], info["left_out"] or
                     "none", 100 * info["padding"], self.steps_per_epoch, tc.epochs, self.state.total_steps,
                     f"{self.params['trainable']:,}", "fsdp" if self.sharded else "ddp", self.world_size)
            if self.mixture_names is not None:
                log.info("mixture rows per epoch: %s", dict(zip(self.mixture_names, info["datasets"])))
        self.meter = DatasetMeter(self.mixture_names) if self.mixture_names is not None else None
        self.peak = device_peak_tflops(self.device, tc.logging.peak_tflops)
        self.window = _Window()
        self.last_checkpoint_time = time.monotonic()

    # ---------------------------------------------------------------- the loop

    def train(self) -> None:
        """Optimizer steps until `max_steps`/`epochs`, or early stopping, from one stream that crosses epochs (a
        new one only after a rollback that replays data)."""
        while self.running():
            start = (self.state.epoch, self.state.position)
            prefetch, stream = self.open_stream()
            diverged = self.run_stream(prefetch)
            prefetch.close()  # stops and joins the reader thread, so the stream can be closed here
            stream.close()
            if diverged:
                self.rollback("band control divergence", replay_data=True)
            elif self.running() and (self.state.epoch, self.state.position) == start:
                # the stream ran out at once: the remaining epochs are too small for one global step
                self.state.epoch, self.state.position = self.tc.epochs, 0
            # else it ended at its step limit with steps left (guard skips consume data): a new one goes on

    def running(self) -> bool:
        s = self.state
        return s.step < s.total_steps and s.epoch < self.tc.epochs and not self.stopper.stopped

    def run_stream(self, prefetch: Prefetcher) -> bool:
        """Steps from the stream until the run is done; True when band control asks for a rollback."""
        s, tc = self.state, self.tc
        while self.running():
            t0 = time.perf_counter()
            try:
                epoch, i, steps_in_epoch, batches = prefetch.get()
            except StopIteration:
                return False
            data_s = time.perf_counter() - t0
            if i == 0 or self.epoch_rows is None:
                self.begin_epoch(epoch)
            end_of_epoch = i == steps_in_epoch - 1
            step = self.forward_backward(batches)
            if not self.optimizer_step(step):  # the spike guard skipped it
                self.next_position(end_of_epoch)
                continue
            self.window.add(time.perf_counter() - t0, data_s, step.tokens, step.flops)
            if self.band_control(step):  # a divergence: back to the last checkpoint, then a new stream
                return True
            run_done = s.step >= s.total_steps
            if s.step % tc.logging.every_steps == 0 or end_of_epoch or run_done:
                self.log_step(step)
            self.next_position(end_of_epoch)  # a checkpoint taken now resumes at the next epoch's start
            val = None
            if s.step % tc.eval_every_steps == 0 or run_done:
                val = self.validate()
                run_done = self.after_validation(val) or run_done
            if self.checkpoint_due(end_of_epoch or run_done):
                self.save_checkpoint(val)
        return False

    def open_stream(self) -> tuple[Prefetcher, object]:
        """Point this rank's cursor at its entries from the data position to the end of the run and start
        prefetching its steps: (epoch, step in the epoch, steps in the epoch, collated micro-batches). The stream
        stops at the steps left to `total_steps`, so Ray Data never fetches past the run's end (with
        `train.max_steps` far below `epochs` it would keep the CPUs busy with batches nobody reads)."""
        s, rank, ws, accum = self.state, self.rank, self.world_size, self.grad_accum
        limit = s.total_steps - s.step
        ray.get(self.planner.run_cursor.remote(rank, s.epoch, s.position, ws, accum, self.tc.epochs, limit))
        stream = micro_batches(self.train_shard)
        self.epoch_rows = None

        @functools.cache
        def n_entries(epoch: int) -> int:
            return ray.get(self.planner.n_entries.remote("train", epoch))

        def steps():
            for epoch, i, steps_in_epoch, entries in rank_steps(n_entries, ws, rank, accum, s.epoch, s.position,
                                                                self.tc.epochs, limit):
                out = []
                for j in entries:
                    t = next(stream)
                    got = int(t.column("entry")[0].as_py())
                    if got != j:  # the stream must serve the cursor, in order
                        raise RuntimeError(f"ingest stream out of order: got plan entry {got}, expected {j} (epoch "
                                           f"{epoch})")
                    out.append((collate(t, self.speaker_to_id), batch_ids(t), padding_of(t),
                                int(t.column("dataset")[0].as_py()), j))
                yield epoch, i, steps_in_epoch, out

        return Prefetcher(steps()), stream

    def begin_epoch(self, epoch: int) -> None:
        """Entering `epoch` (or resuming inside it): rows per dataset so far this epoch, for the mixture logs; the
        part before the resume position is counted on rank 0 only."""
        s = self.state
        if epoch != s.epoch:  # epochs too small for one global step were passed over
            s.epoch, s.position = epoch, 0
        self.epoch_rows = np.asarray(ray.get(self.planner.rows_per_dataset.remote("train", s.epoch, s.position))
                                     if self.rank == 0 else np.zeros(len(self.mixture_names or [0])), dtype=np.int64)

    def forward_backward(self, batches: list) -> Step:
        """This rank's micro-batches (gradient sync on the last only), then one all-reduce of the step's numbers."""
        s, tc, device, ws = self.state, self.tc, self.device, self.world_size
        lr = self.scheduler.get_last_lr()[0]
        self.ddp_model.train()
        self.model.set_grl_lambda(s.grl_lambda)  # the GRL module follows the run state
        weights = tc.loss.model_copy(update={"speaker": s.speaker_weight})
        sums: dict[str, float] = {}
        tokens = flops = 0.0
        micro_losses = []
        for k, (batch, ids, pad, dataset, j) in enumerate(batches):
            # seeded by the batch's place in the epoch plan, not by (rank, micro-step): the same batch gets the
            # same dropout whatever the world size, so an elastic run reproduces a fixed-size one
            torch.manual_seed(step_seed(self.cfg.run.seed, s.epoch, j))
            batch = to_device(batch, device)
            sync = grad_sync(self.ddp_model, k == len(batches) - 1 or ws == 1)
            with sync, torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                      enabled=self.amp_dtype is not None):
                out = self.ddp_model(batch, weights)
                self.scaler.scale(out["loss"] / len(batches)).backward()
            if self.audit is not None:
                # position (data consumed this epoch) is unique per step even when a skipped step and the next
                # one share a step number
                self.audit.write(json.dumps({"attempt": self.attempt, "epoch": s.epoch, "step": s.step,
                                             "position": s.position, "rank": self.rank, "micro": k, "ids": ids}) + "\n")
            # detached, and one device-to-host copy for all of them (not one sync per metric)
            got = dict(zip(_READ_KEYS, torch.stack([out[k].detach().float() for k in _READ_KEYS]).tolist()))
            for key in METRIC_KEYS:
                sums[key] = sums.get(key, 0.0) + got[key] / len(batches)
            micro_losses.append(got["loss"])
            if self.meter is not None:
                self.meter.add(dataset, got["mel_loss"], got["n_mel_tokens"])
                self.epoch_rows[dataset] += len(ids)
            n = got["n_mel_tokens"] + got["n_text_tokens"]
            tokens += n
            flops += n * flops_per_token(self.cfg.model, gpt_seq_len(self.cfg.model, batch["text_ids"].shape[1],
                                                                     batch["codes"].shape[1]))
            sums["padding"] = sums.get("padding", 0.0) + pad / len(batches)
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip))  # FSDP: all shards
        # one all-reduce: the step's tokens and FLOPs, and every metric averaged over ranks (the loss every rank
        # must judge the same; logged values that do not depend on how batches are split over ranks)
        keys = sorted(sums)
        reduced = _all_sum([tokens, flops, *[sums[k] for k in keys]], device, ws)
        metrics = {k: v / ws for k, v in zip(keys, reduced[2:])}
        return Step(metrics, reduced[0], reduced[1], grad_norm, lr, s.grl_lambda, s.speaker_weight, batches,
                    micro_losses)

    def optimizer_step(self, step: Step) -> bool:
        """Take the step, or skip it when the spike guard says so (weights, optimizer, LR schedule, scaler and
        step counter untouched; enough skips in a row roll back). The data is consumed either way."""
        s = self.state
        verdict = self.guard.check(step.metrics["loss"], step.grad_norm)
        self.guard.commit(verdict)
        if not verdict.ok:
            discard_step(self.optimizer, self.scaler)
            self.record_skip(verdict, step)
            s.skipped_steps += 1
            s.position += self.world_size * self.grad_accum  # the bad batches are consumed, not learnt
            if self.guard.needs_reload:
                self.guard_reload()
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        s.step += 1
        s.position += self.world_size * self.grad_accum
        if self.ema is not None:
            self.ema.update(self.model, s.step)
        s.tokens_seen += int(step.tokens)
        return True

    def next_position(self, end_of_epoch: bool) -> None:
        if end_of_epoch:
            self.state.epoch, self.state.position = self.state.epoch + 1, 0

    # ---------------------------------------------------------------- the concerns, one place each

    def band_control(self, step: Step) -> bool:
        """Feed the rank-averaged speaker accuracy and loss to the band controller; its λ/weight go into the run
        state (the GRL module and the logs read them from there). True when it asks for a rollback."""
        band, s = self.band, self.state
        if band is None:
            return False
        changes = band.update(s.step, step.metrics["speaker_acc"], step.metrics["loss"])
        s.grl_lambda, s.speaker_weight, s.band = band.grl_lambda, band.speaker_weight, band.state_dict()
        if self.rank == 0:
            for change in changes:
                log.info("band control: %s", change)
        if not changes:
            return False
        if not band.amp_enabled:
            self.amp_dtype = None
        return band.reload_requested

    def guard_reload(self) -> None:
        """After `max_consecutive_skips` skips in a row: roll back with the learning rate times the factor.

        The data position is kept, so the batches behind the skips are not replayed. Past `max_reloads` this
        raises guard.DivergenceError."""
        reasons = dict(self.guard.reasons)
        factor = self.guard.begin_reload()
        bases = [b * factor for b in self.scheduler.base_lrs]
        ckpt = self.rollback("spike guard", replay_data=False)
        set_base_lrs(self.optimizer, self.scheduler, bases)
        if self.rank == 0:
            event = {"event": "guard_reload", "step": self.state.step, "checkpoint": ckpt,
                     "lr_scale": self.guard.lr_scale, "reloads": self.guard.reloads, "skip_reasons": reasons,
                     "time": time.time()}
            log.warning("spike guard: %d bad steps in a row -> reloaded %s, learning rate x%g (reload %d of at most "
                        "%d)", self.guard.cfg.max_consecutive_skips, ckpt or "nothing (no checkpoint yet)",
                        self.guard.lr_scale, self.guard.reloads, self.guard.cfg.max_reloads)
            _append_event(self.run_dir, event)

    def rollback(self, why: str, replay_data: bool) -> str | None:
        """Back to the newest checkpoint: weights, optimizer, LR schedule, scaler, EMA, step and tokens seen (the
        step drives the schedule and reseeding); with `replay_data` also its epoch and data position. The rest
        of the run state (λ, weight, control, best, counters) stays as it is now. Returns the checkpoint, or None
        when there is none yet: then nothing is reloaded (a skipped step never changed the weights)."""
        from indextts_ray.train.export import latest_checkpoint

        s = self.state
        ckpt = None
        if self.rank == 0:
            with contextlib.suppress(UserError):  # no checkpoint yet
                ckpt = str(latest_checkpoint(self.run_loc))
        ckpt = _from_rank0(ckpt, self.world_size)  # the same checkpoint on every rank, even while one is uploading
        s.rollbacks += 1
        if ckpt is None:
            if self.rank == 0:
                log.warning("%s before the first checkpoint: nothing to reload", why)
            return None
        with storage.local_copy(ckpt) as d:
            saved, _ = load_state(d, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                  scaler=self.scaler, ema=self.ema)
        s.step, s.tokens_seen = saved.step, saved.tokens_seen
        if replay_data:
            s.epoch, s.position = saved.epoch, saved.position
        if self.rank == 0:
            log.warning("%s: reloaded %s (step %d), rollback %d", why, storage.name(ckpt), s.step, s.rollbacks)
        return ckpt

    def log_step(self, step: Step) -> None:
        s, ws = self.state, self.world_size
        metrics = {**step.metrics, "step": s.step, "epoch": s.epoch, "time": time.time(), "lr": step.lr,
                   "grad_norm": step.grad_norm, "world_size": ws, "grad_accum": self.grad_accum,
                   "grl_lambda": step.grl_lambda, "speaker_weight": step.speaker_weight, "total_steps": s.total_steps,
                   **self.guard.metrics(), **self.window.rates(self.peak, ws)}
        if self.band is not None and self.band.cfg.enabled:  # the smoothed accuracy the controller acts on
            metrics["band_acc"] = self.band.accuracy
        if self.meter is not None:  # per-dataset loss over the window (all ranks) and samples this epoch
            metrics.update(self.meter.metrics(_all_sum(self.meter.totals(), self.device, ws)))
            rows_so_far = _all_sum(self.epoch_rows.tolist(), self.device, ws)
            metrics.update({f"mix/{n}/epoch_samples": int(c) for n, c in zip(self.mixture_names, rows_so_far)})
        self.tracker.log(metrics, s.step)
        self.window = _Window()

    def record_skip(self, verdict: Verdict, step: Step) -> None:
        """This rank's sample ids of a skipped step -> <run>/<bad_batches_dir>/rank<r>.jsonl; rank 0 logs it."""
        s, tc = self.state, self.tc
        record_bad_batch(self.run_dir / tc.guard.bad_batches_dir / f"rank{self.rank}.jsonl", step=s.step,
                         ids=[i for _b, ids, _p, _d, _j in step.batches for i in ids], verdict=verdict, rank=self.rank,
                         epoch=s.epoch, position=s.position, attempt=self.attempt, micro_losses=step.micro_losses,
                         micro_sizes=[len(ids) for _b, ids, _p, _d, _j in step.batches])
        if self.rank == 0:
            log.warning("step %d: skipped (%s: loss %.4g, grad norm %.4g, limits %s / %s), %d in a row; ids in %s",
                        s.step, verdict.reason, verdict.loss, verdict.grad_norm, verdict.loss_limit,
                        verdict.grad_limit, self.guard.consecutive, self.run_dir / tc.guard.bad_batches_dir)

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation over this rank's entries of the validation plan (the ingest stream of training, prompts drawn
        once), with the EMA weights when configured; token-weighted means over all ranks (`train/validation.py`)."""
        model, ws = self.model, self.world_size
        with ema_weights(self.ema, model, self.tc.ema.use_for_eval):
            model.eval()
            ray.get(self.planner.val_cursor.remote(self.rank, ws, self.tc.val_max_batches))
            tables = micro_batches(ray.train.get_dataset_shard("val"))
            lockstep = is_sharded(model)
            totals = validation_sums(model, _in_lockstep(tables, self.device, ws) if lockstep else tables,
                                     self.device, self.amp_dtype)
            if lockstep:  # FSDP's root keeps its gathered weights after a forward, for a backward in training only
                model.reshard()
            if ws > 1:
                dist.all_reduce(totals)
            return validation_metrics(totals)

    def after_validation(self, val: dict) -> bool:
        """Best export, early stopping and the log line of one validation; True when early stopping stops now."""
        s, tc = self.state, self.tc
        self.keep_best(val)
        stop = self.stopper.update(s.step, val[tc.early_stopping.metric])  # same value on every rank
        self.tracker.log({**val, "step": s.step}, s.step, line=False)
        if self.rank == 0:
            log.info("step %d | val_loss %.4f | val_top1 %.3f", s.step, val["val_loss"], val["val_mel_top1"])
            if stop:
                log.info("early stopping at step %d: %s did not improve by more than %g for %d evaluations (best %.4f "
                         "at step %d)", s.step, tc.early_stopping.metric, tc.early_stopping.min_delta,
                         tc.early_stopping.patience, self.stopper.best, self.stopper.best_step)
        return stop

    def keep_best(self, val: dict) -> None:
        """After every validation (not only those that coincide with a checkpoint): a new best val_loss -> `best/`."""
        s, model = self.state, self.model
        if val["val_loss"] >= s.best_val:
            return
        s.best_val = val["val_loss"]
        if self.rank == 0 or self.sharded:  # FSDP: every rank swaps in its shard of the average and helps gather
            with ema_weights(self.ema, model, self.tc.ema.use_for_eval):  # best/ = the weights that were evaluated
                best = full_model(model) if self.sharded else model
                if self.rank == 0:
                    _save_best(best, self.run_dir)
        if self.rank == 0:
            _append_event(self.run_dir, {"event": "best", "step": s.step, "val_loss": val["val_loss"],
                                         "time": time.time()})

    def checkpoint_due(self, boundary: bool) -> bool:
        """Every `checkpoint.every_steps`, at an epoch's or the run's end, and every `every_minutes` of wall time
        (rank 0's clock decides, so every rank checkpoints at the same step)."""
        ck = self.tc.checkpoint
        late = bool(ck.every_minutes) and time.monotonic() - self.last_checkpoint_time > 60 * ck.every_minutes
        return self.state.step % ck.every_steps == 0 or boundary or _agree(late, self.device, self.world_size)

    def save_checkpoint(self, val: dict | None) -> None:
        """Every rank calls report (it is a barrier); rank 0 attaches the checkpoint (FSDP: all ranks gather it)."""
        s, cfg = self.state, self.cfg
        s.guard, s.early_stop = self.guard.state_dict(), self.stopper.state_dict()
        metrics = {"step": s.step, "epoch": s.epoch, **(val or {})}
        checkpoint, tmp = None, None
        weights = gather_state(self.model, self.optimizer, self.ema) if self.rank == 0 or self.sharded else None
        if self.rank == 0:
            tmp = Path(tempfile.mkdtemp(prefix="ckpt-"))
            save_state(tmp, weights=weights, scheduler=self.scheduler, scaler=self.scaler, state=s,
                       config=cfg.model_dump(mode="json"))
            checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        mode = ray.train.CheckpointUploadMode.ASYNC if cfg.train.checkpoint.async_upload \
            else ray.train.CheckpointUploadMode.SYNC
        # Ray deletes the local copy once it is in storage (after the upload when it runs in the background)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step-{s.step:08d}",
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=tmp is not None)
        self.mirror.push()  # a remote run's side files as of this checkpoint
        self.last_checkpoint_time = time.monotonic()

    def cleanup(self) -> None:
        self.tracker.close()
        if self.audit is not None:
            self.audit.close()
        if self.rank == 0:  # lets a rerun of the same config return at once (the loop would find nothing to do)
            atomic_write_json(self.run_dir / FINISHED, {"config_hash": config_hash(self.cfg), "step": self.state.step,
                                                        "epoch": self.state.epoch, "time": time.time()})
        self.mirror.push()


def read_finished(run_dir: Path | str) -> dict | None:
    """The `finished.json` marker of a run that ended (all steps done or stopped early), or None."""
    path = storage.join(run_dir, FINISHED)
    return storage.read_json(path) if storage.is_file(path) else None


# ----------------------------------------------------------------------------- helpers


def resolve_adversary(state: RunState, tc, band: BandController | None, resumed: bool) -> list[str]:
    """Put this start's GRL λ and speaker-loss weight into `state`; return the lines to log.

    With band control they are the controller's: a resumed control state continues when the configured values
    are the ones it started from, and a changed `train.grl_lambda`/`train.loss.speaker` restarts control from the
    new values. Without it they are the config's: a value changed since the checkpoint is applied.
    """
    notes = []
    if band is not None:
        if resumed and band.resume(state.band):
            notes.append(f"band control resumed: λ {band.grl_lambda:.3g}, speaker weight {band.speaker_weight:.3g}")
        elif resumed and state.band:
            notes.append(f"band control restarts from train.grl_lambda={band.grl_lambda:g}, "
                         f"train.loss.speaker={band.speaker_weight:g} (changed since the checkpoint)")
        new = (band.grl_lambda, band.speaker_weight)
    else:
        new = (float(tc.grl_lambda), float(tc.loss.speaker))
        old = (state.grl_lambda, state.speaker_weight)
        for name, a, b in (("train.grl_lambda", old[0], new[0]), ("train.loss.speaker", old[1], new[1])):
            if resumed and a != b:
                notes.append(f"resume: {name} {a:g} -> {b:g} (the config's value; band control is off)")
    state.grl_lambda, state.speaker_weight = new
    return notes


def apply_optimizer_settings(optimizer, scheduler, saved_train: dict, tc) -> list[str]:
    """A changed `train.lr`, `betas` or `weight_decay` on resume replaces the checkpoint's (the optimizer and
    schedule state would restore the old ones); returns what changed. Guard reloads' LR scaling is kept."""
    changed = []
    old_lr = float(saved_train["lr"])
    if old_lr != tc.lr:
        set_base_lrs(optimizer, scheduler, [b * tc.lr / old_lr for b in scheduler.base_lrs])
        changed.append(f"train.lr {old_lr:g} -> {tc.lr:g}")
    if tuple(saved_train["betas"]) != tuple(tc.betas):
        for group in optimizer.param_groups:
            group["betas"] = tuple(tc.betas)
        changed.append(f"train.betas {tuple(saved_train['betas'])} -> {tuple(tc.betas)}")
    if float(saved_train["weight_decay"]) != tc.weight_decay:
        optimizer.param_groups[0]["weight_decay"] = tc.weight_decay  # group 0 decays (make_optimizer)
        changed.append(f"train.weight_decay {saved_train['weight_decay']:g} -> {tc.weight_decay:g}")
    return changed


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
    # a head whose loss weight is 0 runs without grad (metrics only): freeze it, so DDP and AdamW never see a
    # parameter without a gradient (DDP then needs no find_unused_parameters graph walk)
    heads = [(model.heads, h, w) for h, w in HEAD_LOSSES.items()] + [(model.model, h, w)
                                                                     for h, w in LM_HEAD_LOSSES.items()]
    for owner, head, weight in heads:
        module = getattr(owner, head, None)
        if module is not None and getattr(tc.loss, weight) == 0:
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


def accumulation_for(global_micro: int, world_size: int) -> int:
    """Micro-steps per rank so that world_size * accum stays as close as possible to the configured global count."""
    return max(1, round(global_micro / world_size))


def log_resize(run_dir: Path, saved: RunState, world_size: int, grad_accum: int) -> None:
    """Record a world-size change: old -> new size, accumulation, steps redone, wall time lost."""
    logged = read_metrics(run_dir)
    last = max(logged) if logged else saved.step
    lost_s = time.time() - logged[last]["time"] if logged and "time" in logged[last] else None
    event = {"event": "resize", "step": saved.step, "old_world_size": saved.world_size,
             "new_world_size": world_size, "old_grad_accum": saved.grad_accum, "new_grad_accum": grad_accum,
             "lost_steps": max(last - saved.step, 0), "time_lost_s": lost_s, "time": time.time()}
    log.warning("resize: world size %d -> %d, grad_accum %d -> %d, %d steps redone, %s s lost", saved.world_size,
                world_size, saved.grad_accum, grad_accum, event["lost_steps"],
                f"{lost_s:.1f}" if lost_s is not None else "?")
    _append_event(run_dir, event)


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


def ema_weights(ema: EMA | None, model, use: bool):
    """The EMA weights in `model` for the `with` body when there is an average and `use`; else no change."""
    return ema.swapped(model) if ema is not None and use else contextlib.nullcontext()


def _in_lockstep(tables, device, world_size: int):
    """A sharded model all-gathers in every forward, so all ranks must run the same number of batches: the
    planner balances the validation entries over the ranks; should that ever not hold, every rank raises
    instead of one hanging."""
    for b in itertools.count():
        table = next(tables, None)
        have = _all_sum([float(table is not None)], device, world_size)[0]
        if 0 < have < world_size:
            raise RuntimeError(f"validation batch {b}: only {have:.0f} of {world_size} ranks have one (FSDP needs "
                               "equal val shards)")
        if table is None:
            return
        yield table


def _append_event(run_dir: Path, event: dict) -> None:
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _from_rank0(value, world_size: int):
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _save_best(model, run_dir: Path) -> None:
    """Export the best-by-val weights next to the run (atomic directory swap)."""
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
