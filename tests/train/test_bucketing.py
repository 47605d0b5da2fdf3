import numpy as np
import pytest

from indextts_ray.data.bucketing import (
    BucketingSettings,
    RankSchedule,
    padding_fraction,
    plan_epoch,
    rank_steps,
)


def realistic_lengths(n=5000, seed=0):
    """Utterance lengths like a read-speech corpus: log-normal 1.5-15 s at 50 codes/s + text tokens."""
    rng = np.random.default_rng(seed)
    dur = np.clip(rng.lognormal(np.log(5.0), 0.5, n), 1.5, 15.0)
    codes = (dur * 50).astype(int)
    text = (dur * rng.uniform(3, 5, n)).astype(int)
    return codes + text + 4


S = BucketingSettings(max_tokens=8000, max_batch_size=64, window=2048)


def test_plan_uses_every_row_once_and_respects_budget():
    lengths = realistic_lengths()
    plan = plan_epoch(lengths, S, seed=1, epoch=0)
    rows = np.concatenate(plan)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for b in plan:
        assert len(b) <= S.max_batch_size
        assert len(b) == 1 or len(b) * lengths[b].max() <= S.max_tokens


def test_plan_deterministic_and_epoch_dependent():
    lengths = realistic_lengths()
    a = plan_epoch(lengths, S, seed=1, epoch=0)
    b = plan_epoch(lengths, S, seed=1, epoch=0)
    c = plan_epoch(lengths, S, seed=1, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_padding_fraction_on_realistic_durations_is_small():
    lengths = realistic_lengths()
    plan = plan_epoch(lengths, S, seed=3, epoch=0)
    pad = padding_fraction(plan, lengths)
    assert pad <= 0.10, pad
    # without sorting (window of 1 = arrival order) padding is far larger: the bucketing is what helps
    unsorted = plan_epoch(lengths, BucketingSettings(8000, 64, window=1), seed=3, epoch=0)
    assert pad < padding_fraction([np.concatenate(unsorted)[i:i + 16] for i in range(0, len(lengths), 16)], lengths)


def test_padding_fraction_exact():
    lengths = np.array([10, 10, 5, 20])
    assert padding_fraction([np.array([0, 1]), np.array([2, 3])], lengths) == pytest.approx(1 - 45 / (20 + 40))


@pytest.mark.parametrize("world_size,accum", [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_ranks_same_steps_disjoint_and_complete(world_size, accum):
    n_batches = 101
    scheds = [RankSchedule(n_batches, world_size, r, accum) for r in range(world_size)]
    steps = {s.steps_left for s in scheds}
    assert steps == {n_batches // (world_size * accum)}
    seen = [j for s in scheds for i in range(s.steps_left) for j in s.micro_batches(i)]
    used = steps.pop() * world_size * accum
    assert sorted(seen) == list(range(used))
    assert scheds[0].dropped == n_batches - used


def test_resume_with_other_world_size_continues_the_same_order():
    n_batches = 100
    first = [RankSchedule(n_batches, 2, r, 2) for r in range(2)]
    done_steps = 7
    seen = [j for s in first for i in range(done_steps) for j in s.micro_batches(i)]
    position = done_steps * 4
    second = [RankSchedule(n_batches, 3, r, 1, position=position) for r in range(3)]
    seen += [j for s in second for i in range(s.steps_left) for j in s.micro_batches(i)]
    assert len(seen) == len(set(seen))  # nothing twice
    assert sorted(seen) == list(range(len(seen)))
    assert len(seen) == n_batches - second[0].dropped


def test_rank_steps_cross_epochs_from_a_resume_position():
    sizes = {3: 21, 4: 3, 5: 17}  # epoch 4 is too small for one global step of 2 ranks x 2
    got = list(rank_steps(sizes.get, 2, 1, 2, epoch=3, position=8, last_epoch=6))
    expect = [(3, i, 3, RankSchedule(21, 2, 1, 2, 8).micro_batches(i)) for i in range(3)] + \
             [(5, i, 4, RankSchedule(17, 2, 1, 2).micro_batches(i)) for i in range(4)]
    assert got == expect
    assert got[0][3] == [9, 11] and got[3][3] == [1, 3]
    assert list(rank_steps(sizes.get, 2, 0, 2, epoch=6, position=0, last_epoch=6)) == []
    assert list(rank_steps(sizes.get, 2, 1, 2, epoch=3, position=8, last_epoch=6, max_steps=4)) == expect[:4]
