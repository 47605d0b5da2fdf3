"""Read and collate the next steps' micro-batches on a background thread while the current step computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable

_END = object()


class Prefetcher:
    """`get()` returns the items of `items` in order, each computed on a background thread at most `depth` items
    ahead of the consumer; after the last one it raises StopIteration. An error while producing an item is raised
    by the `get()` that would have returned it."""

    def __init__(self, items: Iterable, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _run(self, items: Iterable) -> None:
        try:
            for value in items:
                if self._stop.is_set():
                    return
                self._q.put((value, None))
        except BaseException as e:  # handed to the consumer, raised there with its traceback
            self._q.put((None, e))
            return
        self._q.put((_END, None))

    def get(self):
        if self._done:
            raise StopIteration
        value, err = self._q.get()
        if err is not None or value is _END:
            self._done = True
        if err is not None:
            raise err
        if value is _END:
            raise StopIteration
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
