"""The planner's training cursor runs across epochs and serves exactly the rank's per-epoch schedules."""

import numpy as np

from indextts_ray.data.bucketing import BucketingSettings, RankSchedule
from indextts_ray.data.config import PromptConfig
from indextts_ray.data.ingest import IngestPlanner, make_spec


def test_run_cursor_equals_the_epoch_cursors_it_replaces(tiny_dataset):
    spec = make_spec([str(tiny_dataset)], seed=3, bucketing=BucketingSettings(300, 4, 64),
                     prompt=PromptConfig(single_utterance="self"), run_key="cursor-test")
    planner = IngestPlanner(spec)
    ws, accum, epochs = 2, 1, 3
    for rank in range(ws):
        planner.run_cursor(rank, 0, 2, ws, accum, epochs)  # resumed at data position 2 of epoch 0
        run = []
        while got := planner.entries("train", rank, len(run), 5):
            run += got
        expect = []
        for epoch in range(epochs):
            schedule = RankSchedule(planner.n_entries("train", epoch), ws, rank, accum, 2 if epoch == 0 else 0)
            js = [j for i in range(schedule.steps_left) for j in schedule.micro_batches(i)]
            planner.set_cursor("train", rank, epoch, js)
            expect += planner.entries("train", rank, 0, len(js))
        assert [(e["epoch"], e["entry"]) for e in run] == [(e["epoch"], e["entry"]) for e in expect]
        assert run == expect  # same rows, prompts and crops
        assert {e["epoch"] for e in run} == {0, 1, 2}
        # a retried generator task reads again from the start and gets the same entries
        planner.run_cursor(rank, 0, 2, ws, accum, epochs)
        planner.entries("train", rank, 0, len(run))
        assert planner.entries("train", rank, 3, 4) == run[3:7]
    assert np.unique([e["entry"] for e in run if e["epoch"] == 1]).size == len([e for e in run if e["epoch"] == 1])
