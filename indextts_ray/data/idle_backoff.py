"""Keep Ray Data's scheduling loop from spinning while a training stream waits on its consumer.

The streaming executor blocks (in `ray.wait`, up to 0.1 s) only while some task of the dataset runs. A stream
that is ahead of training has none: every operator waits for the consumer to take a micro-batch, and the
loop runs back to back, ~1.4 ms of Python per step, 150-260 steps/s, a third of a core per stream measured
here (`benchmarks/train_overhead.py`: the two ranks' executors used more CPU than the training itself). The
callback sleeps between steps that find no task running, `MIN_SLEEP_S` doubling to `MAX_SLEEP_S`, and stops
sleeping as soon as a task runs again (the consumer took a batch and the next fetch was dispatched). A step
costs ~2 ms here, so starting at 1 ms still gave ~60 steps/s: the stream goes idle again after each micro-batch.
"""

from __future__ import annotations

import time

from ray.data._internal.execution.execution_callback import ExecutionCallback

MIN_SLEEP_S = 0.01
# a fetch dispatched up to this much later is hidden by the batches already queued for the trainer
MAX_SLEEP_S = 0.05


class IdleBackoff(ExecutionCallback):
    """An `ExecutionCallback` (DataContext.custom_execution_callback_classes): sleeps in idle loop steps."""

    def __init__(self) -> None:
        self.sleep_s = 0.0
        self.steps = self.idle_steps = 0

    def on_execution_step(self, executor) -> None:
        self.steps += 1
        topology = getattr(executor, "_topology", None)  # private: without it (a Ray change), never sleep
        if not topology or any(op.num_active_tasks() for op in topology):
            self.sleep_s = 0.0
            return
        self.idle_steps += 1
        self.sleep_s = min(MAX_SLEEP_S, max(MIN_SLEEP_S, 2 * self.sleep_s))
        time.sleep(self.sleep_s)
