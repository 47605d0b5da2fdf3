import threading
import time

import pytest

from indextts_ray.train.prefetch import Prefetcher


def test_in_order_bounded_and_ends():
    calls = []

    def items():
        for i in range(5):
            calls.append(i)
            yield i * i

    p = Prefetcher(items(), depth=2)
    time.sleep(0.2)
    assert calls == [0, 1, 2]  # two queued, the third waiting for room: never further ahead
    assert [p.get() for _ in range(5)] == [0, 1, 4, 9, 16]
    assert calls == list(range(5))
    with pytest.raises(StopIteration):
        p.get()
    with pytest.raises(StopIteration):
        p.get()


def test_errors_reach_the_consumer():
    def items():
        yield 0
        yield 1
        raise ValueError("bad shard row 2")

    p = Prefetcher(items())
    assert p.get() == 0 and p.get() == 1
    with pytest.raises(ValueError, match="bad shard row 2"):
        p.get()


def test_close_stops_an_endless_producer():
    produced = threading.Event()

    def items():
        while True:
            produced.set()
            yield 1

    p = Prefetcher(items(), depth=1)
    assert p.get() == 1 and produced.is_set()
    p.close(timeout=5)
