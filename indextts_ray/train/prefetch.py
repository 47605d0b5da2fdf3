"""Read and collate the next steps' micro-batches on a background thread while the current step computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Prefetcher:
    """`get(i)` returns `produce(i)` for i = 0, 1, ... in order; at most `depth` items are computed ahead."""

    def __init__(self, produce: Callable[[int], object], n: int, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce, n), daemon=True)
        self._thread.start()

    def _run(self, produce, n: int) -> None:
        for i in range(n):
            if self._stop.is_set():
                return
            try:
                item = (i, produce(i), None)
            except BaseException as e:  # handed to the consumer, raised there with its traceback
                item = (i, None, e)
            self._q.put(item)
            if item[2] is not None:
                return

    def get(self, i: int):
        if i != self._next:
            raise IndexError(f"prefetcher expects item {self._next}, asked for {i}")
        idx, value, err = self._q.get()
        self._next += 1
        if err is not None:
            raise err
        return value

    def close(self, timeout: float = 120.0) -> None:
        """Stop producing and wait for the thread (it finishes the item it is on, which is then dropped)."""
        self._stop.set()
        while self._thread.is_alive():
            while not self._q.empty():
                self._q.get_nowait()
            self._thread.join(timeout=0.05)
            timeout -= 0.05
            if timeout <= 0:
                raise TimeoutError("prefetch thread did not stop")
