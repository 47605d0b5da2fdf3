import pytest
import torch

from indextts_ray.train.ema import EMA, EMAConfig, load_ema_weights


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.frozen = torch.nn.Linear(2, 1)
        self.frozen.requires_grad_(False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def _set(model: Tiny, weight, bias) -> None:
    with torch.no_grad():
        model.lin.weight.copy_(torch.tensor(weight))
        model.lin.bias.copy_(torch.tensor(bias))


def test_tracks_only_trainable_float_parameters():
    ema = EMA(Tiny(), EMAConfig(decay=0.75))
    assert sorted(ema.shadow) == ["lin.bias", "lin.weight"]
    assert all(s.dtype == torch.float32 for s in ema.shadow.values())


def test_update_is_the_formula_exactly():
    model = Tiny()
    _set(model, [[1.0, 2.0], [-4.0, 0.5]], [8.0, 0.0])
    ema = EMA(model, EMAConfig(decay=0.75))
    _set(model, [[5.0, 2.0], [0.0, 0.5]], [0.0, 16.0])
    assert ema.update(model, step=1)
    # 0.75 * old + 0.25 * new, all exact in binary
    assert torch.equal(ema.shadow["lin.weight"], torch.tensor([[2.0, 2.0], [-3.0, 0.5]]))
    assert torch.equal(ema.shadow["lin.bias"], torch.tensor([6.0, 4.0]))
    _set(model, [[2.0, 2.0], [1.0, 0.5]], [2.0, 0.0])
    ema.update(model, step=2)
    assert torch.equal(ema.shadow["lin.weight"], torch.tensor([[2.0, 2.0], [-2.0, 0.5]]))
    assert torch.equal(ema.shadow["lin.bias"], torch.tensor([5.0, 3.0]))
    assert ema.num_updates == 2


def test_update_matches_float64_reference_over_many_steps():
    torch.manual_seed(0)
    model = Tiny()
    decay = 0.9
    ema = EMA(model, EMAConfig(decay=decay))
    ref = model.lin.weight.detach().double().clone()
    for step in range(1, 21):
        with torch.no_grad():
            model.lin.weight.add_(torch.randn(2, 2))
        ema.update(model, step)
        ref = decay * ref + (1 - decay) * model.lin.weight.detach().double()
    torch.testing.assert_close(ema.shadow["lin.weight"].double(), ref, rtol=0, atol=1e-6)


def test_reset_restarts_at_current_weights():
    model = Tiny()
    _set(model, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    ema = EMA(model, EMAConfig(decay=0.5))
    _set(model, [[4.0, 4.0], [4.0, 4.0]], [4.0, 4.0])
    ema.update(model, 1)
    _set(model, [[1.0, 2.0], [3.0, 4.0]], [5.0, 6.0])
    ema.reset(model)
    assert torch.equal(ema.shadow["lin.weight"], model.lin.weight) and ema.num_updates == 0


def test_every_n_steps():
    model = Tiny()
    _set(model, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    ema = EMA(model, EMAConfig(decay=0.5, every_n_steps=3))
    _set(model, [[4.0, 4.0], [4.0, 4.0]], [4.0, 4.0])
    assert [ema.update(model, s) for s in (1, 2, 3, 4, 5, 6)] == [False, False, True, False, False, True]
    assert torch.equal(ema.shadow["lin.bias"], torch.tensor([3.0, 3.0]))  # 0 -> 2 -> 3
    assert ema.num_updates == 2


@pytest.mark.parametrize("dtype,on_cpu", [(torch.float32, False), (torch.bfloat16, True)])
def test_swapped_puts_ema_in_and_restores_bit_identically(dtype, on_cpu):
    torch.manual_seed(0)
    model = Tiny().to(dtype)
    ema = EMA(model, EMAConfig(decay=0.5, on_cpu=on_cpu))
    with torch.no_grad():
        model.lin.weight.mul_(3.0).add_(0.1)
        model.lin.bias.sub_(0.7)
    ema.update(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped(model) as m:
        assert m is model
        assert torch.equal(model.lin.weight, ema.shadow["lin.weight"].to(dtype))
        assert not torch.equal(model.lin.weight, before["lin.weight"])
        assert torch.equal(model.frozen.weight, before["frozen.weight"])
        assert list(model.state_dict()) == list(before)  # an export inside still has the same keys
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), ema.swapped(model):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_state_dict_round_trip_and_strictness():
    torch.manual_seed(0)
    model = Tiny()
    cfg = EMAConfig(decay=0.5)
    ema = EMA(model, cfg)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    ema.update(model, 1)
    state = ema.state_dict()
    other = EMA(Tiny(), cfg)
    other.load_state_dict(state)
    assert other.num_updates == 1 and all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, EMAConfig(decay=0.9)).load_state_dict(state)
    with pytest.raises(ValueError, match="unexpected keys"):
        other.load_state_dict({**state, "x": 1})
    unfrozen = Tiny()
    unfrozen.frozen.requires_grad_(True)
    with pytest.raises(ValueError, match="freeze"):
        EMA(unfrozen, cfg).load_state_dict(state)


def test_load_ema_weights_into_an_export_model():
    torch.manual_seed(0)
    model = Tiny()
    ema = EMA(model, EMAConfig(decay=0.5))
    with torch.no_grad():
        model.lin.weight.add_(2.0)
    ema.update(model, 1)
    fresh = Tiny()
    fresh.frozen.requires_grad_(True)  # a model rebuilt for export does not know what was frozen
    frozen_before = fresh.frozen.weight.clone()
    assert load_ema_weights(fresh, ema.state_dict()) == 2
    assert torch.equal(fresh.lin.weight, ema.shadow["lin.weight"])
    assert torch.equal(fresh.frozen.weight, frozen_before)
