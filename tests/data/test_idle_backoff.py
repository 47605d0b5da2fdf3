"""IdleBackoff: Ray Data's scheduling loop sleeps in steps that find no task running (it spun there while a
training stream waited on its consumer; `benchmarks/train_overhead.py` measures the effect)."""

from types import SimpleNamespace

import pytest

from indextts_ray.data import idle_backoff
from indextts_ray.data.idle_backoff import IdleBackoff


class Op:
    def __init__(self, n: int):
        self.n = n

    def num_active_tasks(self) -> int:
        return self.n


def executor(*active: int):
    """A StreamingExecutor stand-in: its `_topology` maps operators (with their running task counts) to states."""
    return SimpleNamespace(_topology={Op(n): None for n in active})


@pytest.fixture
def sleeps(monkeypatch):
    got: list[float] = []
    monkeypatch.setattr(idle_backoff.time, "sleep", got.append)
    return got


def test_idle_steps_sleep_doubling_to_the_cap_and_a_running_task_resets(sleeps):
    cb = IdleBackoff()
    for _ in range(5):
        cb.on_execution_step(executor(0, 0, 0))
    assert sleeps == [0.01, 0.02, 0.04, 0.05, 0.05]
    cb.on_execution_step(executor(0, 1, 0))  # a fetch task runs: the loop blocks in ray.wait, no sleep
    cb.on_execution_step(executor(0, 0, 0))
    assert sleeps[5:] == [0.01] and (cb.steps, cb.idle_steps) == (7, 6)


def test_without_a_topology_it_never_sleeps(sleeps):
    cb = IdleBackoff()
    cb.on_execution_step(SimpleNamespace())  # a Ray without the private attribute: behave like Ray itself
    cb.on_execution_step(executor())
    assert sleeps == [] and cb.idle_steps == 0

