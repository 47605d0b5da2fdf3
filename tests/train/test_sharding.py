"""FSDP2 (`train.scaling.strategy: fsdp`) against DDP: 2 gloo processes on CPU, tiny model, no Ray.

One spawn runs every scenario (a process pair costs seconds to start); the tests check its results:
the same steps under DDP and FSDP (grad accumulation 2, Stage-2 freeze list, EMA), resume from a checkpoint
written under either strategy, the checkpoint layout, bf16 mixed precision and fp16 with a GradScaler.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from indextts_ray.config import load_config
from indextts_ray.model.checkpoint_io import export_checkpoint
from indextts_ray.model.config import LossWeights
from indextts_ray.model.training import TrainingModel
from indextts_ray.model.unifiedvoice import UnifiedVoice
from indextts_ray.train.collate import collate, to_device
from indextts_ray.train.config import TrainConfig
from indextts_ray.train.ema import EMA, EMAConfig, load_ema_weights
from indextts_ray.train.export import model_from_checkpoint
from indextts_ray.train.loop import freeze_modules, lr_factor, make_optimizer
from indextts_ray.train.sharding import grad_sync, local, shard_model
from indextts_ray.train.state import STATE_FILE, RunState, gather_state, load_state, save_state, step_seed
from tests.train.conftest import make_batch_rows

REPO = Path(__file__).resolve().parents[2]
WORLD, ACCUM, STEPS, ROWS = 2, 2, 3, 3  # rows per micro-batch
FROZEN = ["conditioning_encoder", "perceiver_encoder"]  # Stage 2's list; emotion heads frozen by weight 0


def _tc() -> TrainConfig:
    return TrainConfig(stage=2, speaker_mapping="unused.json", freeze=FROZEN, lr=1e-2, warmup_steps=1,
                       loss=LossWeights(text=0.01, mel=1.0, speaker=0.1, emotion=0.0, emotion_table=0.0))


def _batches(rank: int) -> list[list[dict]]:
    """[step][micro] batches of this rank: different rows on every rank, micro-step and step."""
    table = make_batch_rows(WORLD * ACCUM * STEPS * ROWS, 4, seed=3, prefix="r")
    mapping = {f"spk{i}": i for i in range(4)}
    out = []
    for s in range(STEPS):
        first = [((s * WORLD + rank) * ACCUM + k) * ROWS for k in range(ACCUM)]
        out.append([to_device(collate(table.slice(i, ROWS), mapping), torch.device("cpu")) for i in first])
    return out


def _setup(strategy: str, checkpointing: bool = False):
    """Model (same init on every rank), wrapper, optimizer, schedule, EMA: the loop's order."""
    tc = _tc()
    cfg = load_config(REPO / "configs/model/tiny.yaml").model_copy(update={"checkpointing": checkpointing})
    torch.manual_seed(0)
    model = TrainingModel(cfg, n_speakers=4)
    model.set_grl_lambda(1.0)
    freeze_modules(model, tc)
    if strategy == "fsdp":
        wrapped = shard_model(model, torch.device("cpu"), WORLD, None)
    ema = EMA(model, EMAConfig(enabled=True, decay=0.5))
    optimizer = make_optimizer(model, tc)
    if strategy == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc, STEPS))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return tc, model, wrapped, optimizer, scheduler, scaler, ema


def _steps(rank, tc, model, wrapped, optimizer, scheduler, ema, batches, first: int, last: int) -> list[tuple]:
    """Optimizer steps first..last-1 as the loop does them; [(loss, grad_norm)] averaged like its metrics."""
    out = []
    for s in range(first, last):
        wrapped.train()
        loss = 0.0
        for k, batch in enumerate(batches[s]):
            torch.manual_seed(step_seed(0, s, 2 * k + rank))  # (epoch, plan index) as in the loop
            with grad_sync(wrapped, k == len(batches[s]) - 1):
                o = wrapped(batch, tc.loss)
                (o["loss"] / len(batches[s])).backward()
            loss += float(o["loss"].detach()) / len(batches[s])
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        ema.update(model, s + 1)
        out.append((loss, grad_norm))
    return out


def _save(directory: Path, rank, model, optimizer, scheduler, scaler, ema, step: int) -> None:
    weights = gather_state(model, optimizer, ema)  # collective under FSDP
    if rank == 0:
        save_state(directory, weights=weights, scheduler=scheduler, scaler=scaler, state=RunState(step=step),
                   config=load_config(REPO / "configs/demo/stage1.yaml").model_dump(mode="json"))
    dist.barrier()


def _worker(rank: int, store: str, out: str) -> None:
    # a failing rank must not leave the other waiting in a collective for the default 30 minutes
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    out = Path(out)
    batches = _batches(rank)
    res: dict = {}
    torch.manual_seed(0)
    initial = TrainingModel(load_config(REPO / "configs/model/tiny.yaml"), n_speakers=4).state_dict()
    for strategy in ("ddp", "fsdp"):
        # FSDP also with activation checkpointing: recomputing a sharded block must not change the numbers
        tc, model, wrapped, optimizer, scheduler, scaler, ema = _setup(strategy, checkpointing=strategy == "fsdp")
        res[strategy] = _steps(rank, tc, model, wrapped, optimizer, scheduler, ema, batches, 0, 2)
        _save(out / f"{strategy}-2", rank, model, optimizer, scheduler, scaler, ema, 2)
        res[strategy] += _steps(rank, tc, model, wrapped, optimizer, scheduler, ema, batches, 2, STEPS)
        _save(out / f"{strategy}-3", rank, model, optimizer, scheduler, scaler, ema, 3)
    res["ema_eval"] = _ema_eval(tc, model, ema, batches[0][0])
    # resume under FSDP from step 2 written by FSDP and by DDP: step 3 must repeat
    for source in ("ddp", "fsdp"):
        tc, model, wrapped, optimizer, scheduler, scaler, ema = _setup("fsdp", checkpointing=source == "fsdp")
        load_state(out / f"{source}-2", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
        res[f"resume-{source}"] = _steps(rank, tc, model, wrapped, optimizer, scheduler, ema, batches, 2, STEPS)
    _save(out / "resume-fsdp-3", rank, model, optimizer, scheduler, scaler, ema, 3)
    # rollback / spike-guard reload: the step-2 checkpoint into this live model (it has optimizer state)
    load_state(out / "fsdp-2", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
    res["reload-fsdp"] = _steps(rank, tc, model, wrapped, optimizer, scheduler, ema, batches, 2, STEPS)
    res["half"] = _half_precision(rank, batches)
    if rank == 0:
        torch.save({"results": res, "initial": initial}, out / "results.pt")
    dist.destroy_process_group()


@torch.no_grad()
def _ema_eval(tc, model, ema, batch) -> tuple[float, float, float]:
    """Losses of one batch with the training weights, the EMA swapped into the sharded model, and after."""
    def loss() -> float:  # like the loop's `evaluate`: reshard the root after a forward without backward
        value = float(model(batch, tc.loss)["loss"])
        model.reshard()
        return value

    model.eval()
    before = loss()
    with ema.swapped(model):
        averaged = loss()
    return before, averaged, loss()


def _half_precision(rank: int, batches) -> dict:
    """bf16: sharded params stay fp32, fp32 heads inside; fp16 + GradScaler: an inf on one rank skips both."""
    tc = _tc()
    cfg = load_config(REPO / "configs/model/tiny.yaml")
    res = {}
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        model = TrainingModel(cfg, n_speakers=4)
        freeze_modules(model, tc)
        shard_model(model, torch.device("cpu"), WORLD, dtype)
        optimizer = make_optimizer(model, tc)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=dtype == torch.float16)
        before = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
        with torch.autocast("cpu", dtype=dtype):
            o = model(batches[0][0], tc.loss)
        scaler.scale(o["loss"]).backward()
        if dtype == torch.float16 and rank == 1:  # an overflow in this rank's shard only
            grad = next(local(p.grad) for p in model.parameters() if p.grad is not None and local(p.grad).numel())
            grad.view(-1)[0] = math.inf
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        after = {n: p.full_tensor() for n, p in model.named_parameters()}
        res[str(dtype)] = {
            "loss": float(o["loss"]),
            "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "changed": sorted(n for n in before if not torch.equal(before[n], after[n])),
            "scale": scaler.get_scale() if scaler.is_enabled() else None,
        }
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    blob = torch.load(out / "results.pt", weights_only=False)
    return blob, out


def _blob(path: Path) -> dict:
    return torch.load(path / STATE_FILE, weights_only=True)


def test_fsdp_matches_ddp_with_grad_accumulation(runs):
    blob, out = runs
    res = blob["results"]
    ddp, fsdp = res["ddp"], res["fsdp"]
    assert len(ddp) == len(fsdp) == STEPS
    for (l_ddp, g_ddp), (l_fsdp, g_fsdp) in zip(ddp, fsdp):
        assert l_fsdp == pytest.approx(l_ddp, rel=1e-5) and g_fsdp == pytest.approx(g_ddp, rel=1e-5)
    assert ddp[-1][0] < ddp[0][0]  # it trains (lr 1e-2)
    a, b = _blob(out / "ddp-3"), _blob(out / "fsdp-3")
    assert list(a["model"]) == list(b["model"])
    # atol: the key third of c_attn.bias has a gradient that is 0 but for rounding, and Adam turns that noise
    # (summed in another order under FSDP) into steps of up to ~1e-5 at lr 1e-2; everything else agrees to 1e-7
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=2e-5, msg=k)
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(b["ema"]["shadow"][k], a["ema"]["shadow"][k], rtol=1e-5, atol=2e-5, msg=k)


def test_checkpoint_layout_is_the_same_under_fsdp(runs):
    _, out = runs
    a, b = _blob(out / "ddp-3"), _blob(out / "fsdp-3")
    assert set(a) == set(b)
    oa, ob = a["optimizer"], b["optimizer"]
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]
    assert [{k: v for k, v in g.items() if k != "params"} for g in oa["param_groups"]] == \
        [{k: v for k, v in g.items() if k != "params"} for g in ob["param_groups"]]
    assert sorted(oa["state"]) == sorted(ob["state"])
    for i, s in oa["state"].items():
        assert set(s) == set(ob["state"][i]) and torch.equal(s["step"], ob["state"][i]["step"])
        torch.testing.assert_close(ob["state"][i]["exp_avg"], s["exp_avg"], rtol=1e-5, atol=1e-7)
        assert not any(isinstance(v, torch.distributed.tensor.DTensor) for v in ob["state"][i].values())
    assert a["scheduler"] == b["scheduler"]
    # a plain model loads it strictly, and the export holds exactly the official keys
    model, _ = model_from_checkpoint(out / "fsdp-3")
    export = export_checkpoint(model, out / "export")
    tiny = load_config(REPO / "configs/model/tiny.yaml")
    assert list(torch.load(export / "gpt.pth", weights_only=True)) == list(UnifiedVoice(tiny).state_dict())


def test_frozen_parameters_stay_bit_identical_under_fsdp(runs):
    blob, out = runs
    initial, final = blob["initial"], _blob(out / "fsdp-3")["model"]
    frozen = [k for k in initial if k.startswith(tuple(f"model.{m}." for m in FROZEN))
              or k.startswith(("heads.emotion_classifier.", "heads.emotion_table."))]
    assert frozen and all(torch.equal(initial[k], final[k]) for k in frozen)
    assert any(not torch.equal(initial[k], final[k]) for k in initial if k.startswith("model.gpt."))
    params = dict(TrainingModel(load_config(REPO / "configs/model/tiny.yaml"), n_speakers=4).named_parameters())
    assert not any(k in _blob(out / "fsdp-3")["ema"]["shadow"] for k in frozen if k in params)


def test_fsdp_resumes_exactly_from_either_strategy(runs):
    blob, out = runs
    res = blob["results"]
    # same strategy: bit for bit (loss, grad norm, weights, optimizer, schedule, EMA), also reloaded into a live model
    assert res["resume-fsdp"] == res["reload-fsdp"] == res["fsdp"][2:]
    resumed, reference = _blob(out / "resume-fsdp-3"), _blob(out / "fsdp-3")
    assert all(torch.equal(v, reference["model"][k]) for k, v in resumed["model"].items())
    assert all(torch.equal(v, reference["ema"]["shadow"][k]) for k, v in resumed["ema"]["shadow"].items())
    assert all(torch.equal(v["exp_avg_sq"], reference["optimizer"]["state"][i]["exp_avg_sq"])
               for i, v in resumed["optimizer"]["state"].items())
    assert resumed["scheduler"] == reference["scheduler"]
    # a DDP checkpoint resumed under FSDP continues DDP's run
    assert res["resume-ddp"][0] == pytest.approx(res["ddp"][2], rel=1e-5)


@torch.no_grad()
def test_ema_swaps_into_the_sharded_model_and_back(runs):
    blob, out = runs
    before, averaged, after = blob["results"]["ema_eval"]
    assert after == before and averaged != before
    state = _blob(out / "fsdp-3")
    model = TrainingModel(load_config(REPO / "configs/model/tiny.yaml"), n_speakers=4).eval()
    model.load_state_dict(state["model"])
    batch = _batches(0)[0][0]  # rank 0's
    assert float(model(batch, _tc().loss)["loss"]) == pytest.approx(before, rel=1e-6)
    load_ema_weights(model, state["ema"])
    assert float(model(batch, _tc().loss)["loss"]) == pytest.approx(averaged, rel=1e-6)


def test_half_precision_under_fsdp(runs):
    half = runs[0]["results"]["half"]
    bf16 = half[str(torch.bfloat16)]
    assert math.isfinite(bf16["loss"]) and bf16["param_dtypes"] == ["torch.float32"]  # sharded masters stay fp32
    assert "heads.speaker_classifier.net.0.weight" in bf16["changed"] and "model.gpt.h.0.attn.c_attn.weight" in bf16["changed"]
    fp16 = half[str(torch.float16)]
    assert fp16["changed"] == [] and fp16["scale"] == 512.0  # the inf on rank 1 skipped the step on both ranks


def test_fsdp_rejects_amp_off_on_divergence():
    base = [f"train.data_dir={REPO}", "train.scaling.strategy=fsdp"]
    with pytest.raises(Exception, match="disable_amp_on_divergence=false"):
        load_config(REPO / "configs/stage2.yaml", base)
    load_config(REPO / "configs/stage2.yaml", [*base, "train.band.disable_amp_on_divergence=false"])
    load_config(REPO / "configs/stage1.yaml", base)  # no band control outside Stage 2
