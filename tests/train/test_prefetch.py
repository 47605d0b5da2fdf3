import pytest

from indextts_ray.train.prefetch import Prefetcher


def test_in_order_and_bounded():
    calls = []
    p = Prefetcher(lambda i: calls.append(i) or i * i, 5, depth=2)
    assert [p.get(i) for i in range(5)] == [0, 1, 4, 9, 16]
    assert calls == list(range(5))


def test_errors_reach_the_consumer():
    def produce(i):
        if i == 2:
            raise ValueError("bad shard row 2")
        return i

    p = Prefetcher(produce, 4)
    assert p.get(0) == 0 and p.get(1) == 1
    with pytest.raises(ValueError, match="bad shard row 2"):
        p.get(2)
