import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from indextts_ray.train.guard import (
    DivergenceError,
    SpikeGuard,
    SpikeGuardConfig,
    discard_step,
    record_bad_batch,
    set_base_lrs,
)

# ----------------------------------------------------------------------------- judging, exact numbers


def _guard(**kw) -> SpikeGuard:
    return SpikeGuard(SpikeGuardConfig(**{"warmup_steps": 2, "decay": 0.5, "loss_factor": 3.0, "grad_factor": 10.0,
                                          **kw}))


def test_running_means_thresholds_and_reasons():
    g = _guard()
    assert g.check(1000.0, 1000.0).reason == "ok"  # warming up: only non-finite values are judged
    g.commit(g.check(2.0, 1.0))
    g.commit(g.check(4.0, 3.0))
    assert (g.loss_mean, g.grad_mean, g.observed) == (3.0, 2.0, 2)  # 0.5*2+0.5*4, 0.5*1+0.5*3
    v = g.check(9.0, 1.0)
    assert v.ok and (v.loss_limit, v.grad_limit) == (9.0, 20.0)  # at the limit is still fine
    assert g.check(9.001, 1.0).reason == "loss_spike"
    assert g.check(1.0, 20.5).reason == "grad_spike"
    assert g.check(math.nan, 1.0).reason == "nonfinite_loss"
    assert g.check(1.0, math.inf).reason == "nonfinite_grad"
    assert not any(g.check(*bad).ok for bad in ((9.001, 1.0), (1.0, 20.5), (math.nan, 1.0), (1.0, math.inf)))


def test_skips_are_counted_and_do_not_move_the_means():
    g = _guard()
    for loss, gn in ((2.0, 1.0), (4.0, 3.0)):
        g.commit(g.check(loss, gn))
    for bad in ((100.0, 1.0), (math.nan, 1.0), (1.0, 500.0)):
        g.commit(g.check(*bad))
    assert (g.loss_mean, g.grad_mean, g.observed) == (3.0, 2.0, 2)
    assert (g.skipped, g.consecutive) == (3, 3)
    assert g.reasons == {"nonfinite_loss": 1, "nonfinite_grad": 0, "loss_spike": 1, "grad_spike": 1}
    g.commit(g.check(3.0, 2.0))
    assert (g.consecutive, g.skipped, g.observed, g.loss_mean) == (0, 3, 3, 3.0)


def test_fp16_overflow_is_left_to_the_grad_scaler():
    g = SpikeGuard(SpikeGuardConfig(warmup_steps=0), fp16_scaler=True)
    v = g.check(2.0, math.inf)
    assert v.ok and v.reason == "fp16_overflow"
    g.commit(v)
    assert (g.overflows, g.skipped, g.observed, g.loss_mean) == (1, 0, 0, None)
    assert g.check(math.nan, math.inf).reason == "nonfinite_loss"  # a NaN loss is not an overflow


def test_disabled_guard_accepts_everything():
    g = SpikeGuard(SpikeGuardConfig(enabled=False, warmup_steps=0))
    g.commit(g.check(1.0, 1.0))
    assert g.check(math.nan, math.inf).ok and g.check(1e9, 1e9).ok
    assert not g.needs_reload


def test_state_dict_json_round_trip_and_strictness():
    g = _guard()
    for loss, gn in ((2.0, 1.0), (4.0, 3.0), (math.nan, 1.0)):
        g.commit(g.check(loss, gn))
    state = json.loads(json.dumps(g.state_dict()))
    h = _guard()
    h.load_state_dict(state)
    assert h.state_dict() == g.state_dict()
    assert h.check(9.001, 1.0).reason == "loss_spike"  # judges with the restored means
    with pytest.raises(ValueError, match="unexpected keys"):
        h.load_state_dict({**state, "extra": 1})
    with pytest.raises(ValueError, match="missing key"):
        h.load_state_dict({k: v for k, v in state.items() if k != "observed"})


def _refuse(name):
    raise AssertionError(f"{name} is not JSON")


def test_record_bad_batch_appends_jsonl(tmp_path):
    g = _guard()
    path = tmp_path / "bad" / "rank0.jsonl"
    record_bad_batch(path, step=7, ids=["a", "b"], verdict=g.check(math.nan, 2.0), rank=0,
                     micro_losses=[1.5, math.nan])
    record_bad_batch(path, step=7, ids=["c"], verdict=g.check(1.0, math.inf), rank=0, epoch=1)
    rows = [json.loads(line, parse_constant=_refuse) for line in path.read_text().splitlines()]
    assert rows[0] == {"step": 7, "ok": False, "reason": "nonfinite_loss", "loss": "nan", "grad_norm": 2.0,
                       "loss_limit": None, "grad_limit": None, "rank": 0, "micro_losses": [1.5, "nan"],
                       "ids": ["a", "b"]}
    assert (rows[1]["reason"], rows[1]["grad_norm"], rows[1]["ids"]) == ("nonfinite_grad", "inf", ["c"])


def test_discard_step_leaves_scaler_scale_and_growth_tracker():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3)
    for _ in range(2):  # two good steps: growth tracker at 2
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    before = scaler.state_dict()
    scaler.scale(model(torch.full((1, 2), math.nan)).sum()).backward()
    scaler.unscale_(opt)
    discard_step(opt, scaler)
    assert scaler.state_dict() == before == {**before, "scale": 256.0, "_growth_tracker": 2}
    assert all(p.grad is None for p in model.parameters())
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(opt)  # would raise "unscale_() has already been called" without the reset


# ----------------------------------------------------------------------------- a training run with the guard

BATCH = 8


def _data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 4, generator=g), torch.randn(BATCH, 1, generator=g)) for _ in range(n)]


NAN_BATCH = (torch.full((BATCH, 4), math.nan), torch.zeros(BATCH, 1))


def _huge_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data(1)[0]
    return x, y * 1e4  # a mislabelled sample: loss ~1e8 times the usual, finite


class Run:
    """The loop's step protocol in small: a skipped step changes neither the step counter nor the LR."""

    def __init__(self, guard_cfg: SpikeGuardConfig):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2),
                                         torch.nn.Linear(16, 1))
        weights = [p for p in self.model.parameters() if p.ndim == 2]
        biases = [p for p in self.model.parameters() if p.ndim == 1]  # two groups, as make_optimizer builds
        self.opt = torch.optim.AdamW([{"params": weights, "weight_decay": 0.01}, {"params": biases, "weight_decay": 0.0}],
                                     lr=1e-2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 3) * 0.9**s)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
        self.guard = SpikeGuard(guard_cfg)
        self.step = 0
        self.verdicts = []

    def train(self, batches) -> None:
        for x, y in batches:
            torch.manual_seed(1000 + self.step)  # the loop reseeds dropout from the step counter
            loss = F.mse_loss(self.model(x), y)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))
            verdict = self.guard.check(loss.item(), grad_norm)
            if verdict.ok:
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
                self.step += 1
            else:
                discard_step(self.opt, self.scaler)
            self.guard.commit(verdict)
            self.verdicts.append(verdict.reason)

    def state(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                              "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step})


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, s in a["opt"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["opt"]["state"][i][k]), (i, k)
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    assert a["sched"] == b["sched"] and a["scaler"] == b["scaler"]


def test_skipped_bad_batches_leave_the_run_bit_identical():
    cfg = SpikeGuardConfig(warmup_steps=3, decay=0.9)
    good = _data(10)
    clean = Run(cfg)
    clean.train(good)
    dirty = Run(cfg)
    dirty.train(good[:2] + [NAN_BATCH] + good[2:6] + [_huge_batch()] + good[6:])
    assert dirty.verdicts.count("ok") == 10
    assert [dirty.verdicts[2], dirty.verdicts[7]] == ["nonfinite_loss", "loss_spike"]
    assert (dirty.guard.skipped, dirty.guard.consecutive) == (2, 0)
    _assert_same_state(dirty.state(), clean.state())
    assert dirty.guard.state_dict()["loss_mean"] == clean.guard.state_dict()["loss_mean"]

    # the same bad batches without the guard change the run (what the equality above protects against)
    unguarded = Run(SpikeGuardConfig(enabled=False))
    unguarded.train(good[:2] + [NAN_BATCH] + good[2:6] + [_huge_batch()] + good[6:])
    assert unguarded.step == 12
    assert not torch.equal(unguarded.model[0].weight, clean.model[0].weight)


def test_consecutive_bad_batches_trigger_reload_with_lower_lr():
    cfg = SpikeGuardConfig(warmup_steps=2, max_consecutive_skips=3, reload_lr_factor=0.5, max_reloads=1)
    run = Run(cfg)
    good = _data(12)
    run.train(good[:4])
    checkpoint = run.state()  # the last good checkpoint, at step 4
    lr_at_4 = run.sched.get_last_lr()[0]
    run.train(good[4:6])  # the weights move on after it
    run.train([NAN_BATCH, NAN_BATCH])
    assert run.guard.consecutive == 2 and not run.guard.needs_reload
    run.train([NAN_BATCH])
    assert run.guard.needs_reload

    # reload: remember the schedule's base lrs, restore the checkpoint, give the schedule the lowered ones
    factor = run.guard.begin_reload()
    bases = [b * factor for b in run.sched.base_lrs]
    run.model.load_state_dict(checkpoint["model"])
    run.opt.load_state_dict(checkpoint["opt"])
    run.sched.load_state_dict(checkpoint["sched"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    run.step = checkpoint["step"]
    set_base_lrs(run.opt, run.sched, bases)
    assert not run.guard.needs_reload and (run.guard.reloads, run.guard.lr_scale) == (1, 0.5)
    assert all(torch.equal(v, checkpoint["model"][k]) for k, v in run.model.state_dict().items())
    assert run.sched.base_lrs == [0.005, 0.005] and [g["initial_lr"] for g in run.opt.param_groups] == [0.005, 0.005]
    assert [g["lr"] for g in run.opt.param_groups] == run.sched.get_last_lr() == [0.5 * lr_at_4] * 2

    run.train(good[6:7])  # training goes on from step 4 at half the schedule
    assert run.step == 5 and run.guard.consecutive == 0
    reference = Run(cfg)
    reference.train(good[:5])
    assert run.sched.get_last_lr()[0] == 0.5 * reference.sched.get_last_lr()[0]

    # the lowered schedule is in the scheduler's state: a resumed run keeps it
    resumed = Run(cfg)
    state = run.state()
    resumed.opt.load_state_dict(state["opt"])
    resumed.sched.load_state_dict(state["sched"])
    assert resumed.sched.base_lrs == [0.005, 0.005] and resumed.sched.get_last_lr() == run.sched.get_last_lr()

    run.train([NAN_BATCH] * 3)  # bad again, and no reload left
    assert run.guard.needs_reload
    with pytest.raises(DivergenceError, match="max_reloads"):
        run.guard.begin_reload()
