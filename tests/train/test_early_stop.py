import math

import pytest

from indextts_ray.train.early_stop import EarlyStopping, EarlyStoppingConfig

# validation mel loss every 100 steps: improves, then plateaus and creeps up (the Stage-3 "rising loss")
CURVE = [(100, 5.0), (200, 4.0), (300, 3.5), (400, 3.45), (500, 3.48), (600, 3.5), (700, 3.6), (800, 3.7)]


def _run(stopper: EarlyStopping, curve) -> int | None:
    for step, value in curve:
        if stopper.update(step, value):
            return step
    return None


@pytest.mark.parametrize("min_delta,stop_step,best,best_step", [
    (0.1, 600, 3.5, 300),  # 3.45 is not better than 3.5 by more than 0.1: three bad evals after step 300
    (0.0, 700, 3.45, 400),
])
def test_stops_at_the_expected_step(min_delta, stop_step, best, best_step):
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, patience=3, min_delta=min_delta))
    assert _run(stopper, CURVE) == stop_step
    assert (stopper.best, stopper.best_step, stopper.stopped_at) == (best, best_step, stop_step)


def test_patience_counts_evaluations_and_resets_on_improvement():
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, patience=2))
    assert _run(stopper, [(1, 3.0), (2, 3.1), (3, 2.9), (4, 3.0), (5, 2.95)]) == 5
    assert (stopper.best, stopper.best_step) == (2.9, 3)


def test_nan_is_no_improvement():
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, patience=2))
    assert _run(stopper, [(1, math.nan), (2, 3.0), (3, math.nan), (4, math.inf)]) == 4
    assert (stopper.best, stopper.best_step) == (3.0, 2)


def test_disabled_tracks_best_but_never_stops():
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=False, patience=1))
    assert _run(stopper, CURVE) is None
    assert (stopper.best, stopper.best_step, stopper.stopped) == (3.45, 400, False)


def test_resume_mid_curve_stops_at_the_same_step():
    cfg = EarlyStoppingConfig(enabled=True, patience=3, min_delta=0.1)
    first = EarlyStopping(cfg)
    assert _run(first, CURVE[:4]) is None
    resumed = EarlyStopping(cfg)
    resumed.load_state_dict(first.state_dict())
    assert _run(resumed, CURVE[4:]) == 600
    again = EarlyStopping(cfg)
    again.load_state_dict(resumed.state_dict())
    assert again.stopped and again.stopped_at == 600  # a rerun of a stopped stage ends at once
    with pytest.raises(ValueError, match="unexpected keys"):
        again.load_state_dict({**resumed.state_dict(), "x": 0})
