"""Elastic training: a node leaves mid-epoch; the run continues on 1 worker with the same global batch,
the same epoch order (every planned sample exactly once) and the same losses as a fixed 2-worker run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from indextts_ray.train.tracking import read_metrics
from tests.train.test_train_ray import consumed_ids, planned_ids, stage_cfg

pytestmark = pytest.mark.slow  # ~2-3 min: a simulated 2-node cluster, a node removal and a group restart

SCRIPT = Path(__file__).with_name("elastic_run.py")


def test_node_loss_keeps_global_batch_order_and_losses(tiny_dataset, ray_local, tmp_path):
    ref_cfg = stage_cfg(1, tiny_dataset, tmp_path, "ref", "train.epochs=2", "train.checkpoint.every_steps=2",
                        "train.eval_every_steps=100")
    from indextts_ray.train.trainer import run_training

    run_training(ref_cfg)
    out = subprocess.run([sys.executable, str(SCRIPT), str(tiny_dataset), str(tmp_path)], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["finished"]
    run_dir = tmp_path / "elastic"

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["old_world_size"] == 2 and e["new_world_size"] == 1 and e["new_grad_accum"] == 2 for e in events)

    m, ref = read_metrics(run_dir), read_metrics(tmp_path / "ref")
    steps = sorted(s for s in m if "mel_loss" in m[s])
    assert steps == sorted(s for s in ref if "mel_loss" in ref[s])
    assert {m[s]["world_size"] * m[s]["grad_accum"] for s in steps} == {2}  # global batch unchanged
    assert {m[s]["world_size"] for s in steps} == {1, 2}
    for s in steps:  # same batches per step, same weights: only float summation order differs
        assert m[s]["mel_loss"] == pytest.approx(ref[s]["mel_loss"], rel=2e-3), s

    for epoch, ids in consumed_ids(run_dir).items():
        assert sorted(ids) == sorted(planned_ids(ref_cfg, epoch)), epoch
