"""BandController on the simulated plant: it reaches the band and stays; divergence, anti-windup, resume."""

import json
import math

import pytest

from indextts_ray.train.band import BandController, Change, DivergenceError, controller_for
from indextts_ray.train.config import TrainConfig
from indextts_ray.train.robust_config import BandControlConfig
from indextts_ray.tune.plant import PlantSettings, SimulatedPlant, band_stats, simulate

CFG = BandControlConfig()
STEPS = 2000


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("start_acc", [0.9, 0.1])
def test_enters_band_and_stays(start_acc, seed):
    settings = PlantSettings(start_acc=start_acc)
    fixed, fixed_entry = band_stats(simulate(SimulatedPlant(settings, seed), STEPS), CFG.low, CFG.high)
    assert fixed_entry is None  # with the seed defaults (λ 1, weight 0.1) this plant never sees the band

    controller = BandController(CFG, grl_lambda=1.0, speaker_weight=0.1)
    rows = simulate(SimulatedPlant(settings, seed), STEPS, controller)
    inside, entry = band_stats(rows, CFG.low, CFG.high)
    assert entry is not None and entry < 300, entry
    assert inside >= 0.8, inside
    if start_acc > CFG.high:  # too much speaker information: only λ goes up
        assert controller.grl_lambda > 2.0 and controller.speaker_weight == 0.1
    else:  # a weak classifier: only the weight goes up
        assert controller.speaker_weight > 0.2 and controller.grl_lambda == 1.0


def test_lowers_lambda_once_the_weight_is_exhausted():
    # a classifier that more weight barely helps: only a weaker adversary brings accuracy up to the band
    settings = PlantSettings(start_acc=0.1, weight_gain=0.2)
    controller = BandController(CFG, grl_lambda=1.0, speaker_weight=0.1)
    rows = simulate(SimulatedPlant(settings, 0), STEPS, controller)
    inside, entry = band_stats(rows, CFG.low, CFG.high)
    assert entry is not None and inside >= 0.8, (entry, inside)
    assert controller.speaker_weight == CFG.weight_max and 0.1 < controller.grl_lambda < 0.8
    first_lambda_drop = next(r["step"] for r in rows if r["grl_lambda"] < 1.0)
    first_weight_max = next(r["step"] for r in rows if r["speaker_weight"] == CFG.weight_max)
    assert first_weight_max < first_lambda_drop


def test_changes_carry_step_and_reason():
    controller = BandController(CFG, 1.0, 0.1)
    changes = []
    for step in range(1, 41):
        changes += controller.update(step, 0.95, 2.0)
    assert changes and all(c.name == "grl_lambda" and c.new > c.old for c in changes)
    assert [c.step for c in changes] == [10, 20, 30, 40]  # update_every = 10
    assert "above target [0.375, 0.525]" in changes[0].reason
    assert str(changes[0]).startswith("step 10: grl_lambda 1 -> ")
    assert json.loads(json.dumps(changes[0].to_dict()))["name"] == "grl_lambda"


def _warm(controller: BandController, steps: int = 50, acc: float = 0.95) -> None:
    for step in range(1, steps + 1):
        controller.update(step, acc, 2.0)


def test_nan_loss_halves_lambda_and_weight_disables_amp_requests_reload():
    controller = BandController(CFG, 1.0, 0.1)
    _warm(controller)
    lam, weight = controller.grl_lambda, controller.speaker_weight
    assert lam > 1.0 and controller.amp_enabled
    changes = controller.update(51, 0.5, math.nan)
    assert {c.name: (c.old, c.new) for c in changes} == {
        "divergences": (0, 1), "grl_lambda": (lam, lam * 0.5), "speaker_weight": (weight, weight * 0.5),
        "amp": (1.0, 0.0)}
    assert all(c.reason.startswith("divergence #1: loss nan") for c in changes)
    assert controller.reload_requested and not controller.amp_enabled
    assert controller.update(52, 0.5, 2.0) == [] and not controller.reload_requested


def test_loss_spike_is_a_divergence_but_noise_is_not():
    controller = BandController(CFG, 1.0, 0.1)
    for step in range(1, 31):
        assert controller.update(step, 0.45, 2.0) == []  # in band: nothing to do
    assert controller.update(31, 0.45, 5.9) == [] and not controller.reload_requested  # < 3 x mean
    changes = controller.update(32, 0.45, 20.0)
    assert [c.name for c in changes] == ["divergences", "grl_lambda", "speaker_weight", "amp"]
    assert controller.reload_requested
    assert "> 3 x running mean" in changes[0].reason


def test_divergence_respects_bounds_and_options():
    cfg = BandControlConfig(disable_amp_on_divergence=False, reload_on_divergence=False)
    controller = BandController(cfg, grl_lambda=0.15, speaker_weight=0.015)
    changes = controller.update(1, 0.5, math.inf)
    assert {c.name: c.new for c in changes} == {"divergences": 1, "grl_lambda": 0.1, "speaker_weight": 0.01}
    assert controller.amp_enabled and not controller.reload_requested
    # at the floor nothing can go lower, but the divergence is still reported
    assert [c.name for c in controller.update(2, 0.5, math.nan)] == ["divergences"]


def test_too_many_divergences_stop_the_run():
    controller = BandController(BandControlConfig(max_divergences=2), 1.0, 0.1)
    controller.update(1, 0.5, math.nan)
    controller.update(2, math.nan, 2.0)
    with pytest.raises(DivergenceError, match="divergence #3"):
        controller.update(3, 0.5, math.nan)


def test_anti_windup_lets_lambda_fall_as_soon_as_the_error_reverses():
    cfg = BandControlConfig(lambda_max=2.0)
    controller = BandController(cfg, 1.0, 0.1)
    for step in range(1, 501):  # an unreachable band: λ pinned at its bound for 50 updates
        controller.update(step, 0.99, 2.0)
    assert controller.grl_lambda == 2.0
    for step in range(501, 521):
        controller.update(step, 0.10, 2.0)
    # two updates later λ is on its way down; a wound-up integral (50 x 0.47) would pin it for dozens
    assert controller.grl_lambda < 1.5
    for step in range(521, 551):
        controller.update(step, 0.10, 2.0)
    assert controller.grl_lambda == 1.0 and controller.speaker_weight > 0.1


def test_state_dict_round_trip_continues_identically():
    plant = SimulatedPlant(PlantSettings(start_acc=0.9), seed=3)
    a = BandController(CFG, 1.0, 0.1)
    simulate(plant, 500, a)
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON types, as in the checkpoint
    b = BandController(CFG, 1.0, 0.1)
    assert b.resume(state)
    assert b.state_dict() == a.state_dict()
    outputs_a, outputs_b = [], []
    for step in range(501, 1001):
        acc, loss = plant.step(a.grl_lambda, a.speaker_weight)
        outputs_a.append((a.update(step, acc, loss), a.grl_lambda, a.speaker_weight))
        outputs_b.append((b.update(step, acc, loss), b.grl_lambda, b.speaker_weight))
    assert outputs_a == outputs_b
    assert any(changes for changes, _, _ in outputs_a)


def test_resume_restarts_control_when_the_configured_start_changed():
    a = BandController(CFG, 1.0, 0.1)
    _warm(a)
    assert not BandController(CFG, 2.0, 0.1).resume(a.state_dict())  # e.g. train.grl_lambda=2 on resume
    assert not BandController(CFG, 1.0, 0.1).resume({})  # a checkpoint without control state
    fresh = BandController(CFG, 2.0, 0.1)
    fresh.resume(a.state_dict())
    assert fresh.grl_lambda == 2.0


def test_load_state_dict_rejects_missing_and_unknown_keys():
    state = BandController(CFG, 1.0, 0.1).state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['integral'\], unknown keys \['extra'\]"):
        BandController(CFG, 1.0, 0.1).load_state_dict({**{k: v for k, v in state.items() if k != "integral"},
                                                      "extra": 1})
    with pytest.raises(ValueError, match="version"):
        BandController(CFG, 1.0, 0.1).load_state_dict({**state, "version": 99})


def test_disabled_controller_changes_nothing():
    controller = BandController(BandControlConfig(enabled=False), 1.0, 0.0)
    assert controller.update(10, 0.99, math.nan) == [] and not controller.reload_requested
    assert (controller.grl_lambda, controller.speaker_weight) == (1.0, 0.0)


def test_config_validation():
    with pytest.raises(ValueError, match=r"low \(0.7\) must be < high \(0.6\)"):
        BandControlConfig(low=0.7, high=0.6)
    with pytest.raises(ValueError, match="outside its bounds"):
        BandController(CFG, grl_lambda=20.0, speaker_weight=0.1)


def test_controller_for_only_in_stage_2_with_a_speaker_loss():
    mapping = {"speaker_mapping": "m.json"}
    assert controller_for(TrainConfig(stage=1)) is None
    assert controller_for(TrainConfig(stage=2, loss={"speaker": 0.0})) is None
    assert controller_for(TrainConfig(stage=2, band={"enabled": False}, **mapping)) is None
    controller = controller_for(TrainConfig(stage=2, grl_lambda=2.0, **mapping))
    assert isinstance(controller, BandController) and controller.grl_lambda == 2.0
    assert isinstance(Change(1, "amp", 1.0, 0.0, "x"), Change)
