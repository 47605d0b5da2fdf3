"""Elastic training cost: time lost per resize event, and the share of training time a preemption schedule costs.

    .venv/bin/python benchmarks/elastic.py                       # one node leaves, then comes back
    .venv/bin/python benchmarks/elastic.py --every-minutes 20    # the schedule the fraction is computed for

A simulated 2-node cluster (`ray.cluster_utils.Cluster`: head with 1 CPU, two nodes with 1 CPU and one
`trainslot` each) runs the demo Stage 1 with `train.scaling.num_workers=[1, 2]`. After the first checkpoint
one node is removed (a preemption); `--rejoin-s` later a node is added back (it returns). For each resize
event the loop writes to `<run>/events.jsonl`; this script prints, per event:

- restart → first step: seconds from the node change to the next optimizer step at the new size (detecting
  the change, stopping the group, starting the new one, restoring the checkpoint);
- steps redone: steps since the last checkpoint, done again, and their cost at the measured step time;

and the fraction of training time lost if one node is lost every `--every-minutes` minutes
(lost seconds per event ÷ interval). On real clusters the restart part is about the same (process start,
NCCL init, checkpoint read); the redo part scales with `train.checkpoint.every_minutes`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")  # scale-down waits for it (RAY_NOTES)
os.environ.setdefault("WANDB_MODE", "offline")


def _run(cluster, ray, args, work: Path, data: Path, load_config, run_training) -> tuple[float, list]:
    """Stage 1 in a thread while a node leaves and comes back; returns the wall time and the node changes."""
    nodes = [cluster.add_node(num_cpus=1, resources={"trainslot": 1}) for _ in range(2)]
    ray.init(address=cluster.address)
    cfg = load_config(REPO / "configs/demo/stage1.yaml", [
        f"train.data_dir={data}", f"run.output_dir={work / 'runs'}", "run.name=elastic", "train.epochs=1000",
        f"train.max_steps={args.steps}", f"train.checkpoint.every_steps={args.checkpoint_every}",
        f"train.eval_every_steps={args.steps}", "train.logging.every_steps=1", "train.logging.wandb=false",
        "train.scaling.num_workers=[1, 2]", "train.scaling.cpus_per_worker=0.5",
        "train.scaling.resources_per_worker={trainslot: 1}", "train.scaling.elastic_monitor_interval_s=2"])
    run_dir = work / "runs" / "elastic"
    done = threading.Event()
    started = time.time()
    thread = threading.Thread(target=lambda: (run_training(cfg), done.set()), daemon=True)
    thread.start()

    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not done.is_set() and not (snapshot.exists() and "step-" in snapshot.read_text()):
        time.sleep(0.2)
    changes = []
    if not done.is_set():
        cluster.remove_node(nodes[1])
        changes.append(("node lost", time.time()))
        print(f"[elastic] removed a node at {changes[-1][1] - started:.1f} s", flush=True)
        done.wait(args.rejoin_s)
    if not done.is_set():
        cluster.add_node(num_cpus=1, resources={"trainslot": 1})
        changes.append(("node back", time.time()))
        print(f"[elastic] added a node at {changes[-1][1] - started:.1f} s", flush=True)
    thread.join()
    return time.time() - started, changes

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "indextts-elastic")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--checkpoint-every", type=int, default=4, help="steps between checkpoints")
    p.add_argument("--rejoin-s", type=float, default=30.0, help="seconds until the lost node comes back")
    p.add_argument("--every-minutes", type=float, default=20.0, help="preemption interval for the fraction")
    args = p.parse_args()

    import shutil

    import ray
    from _data import prepared_data

    from indextts_ray.config import load_config
    from indextts_ray.ray_connect import simulated_cluster
    from indextts_ray.train.tracking import read_metrics
    from indextts_ray.train.trainer import run_training

    work = args.work.absolute()
    data = prepared_data(work)
    shutil.rmtree(work / "runs", ignore_errors=True)  # a fresh run, not a resume
    # torn down in any case (an interrupted benchmark must not leave a dead address in ray_current_cluster)
    with simulated_cluster(num_cpus=1) as cluster:
        wall, changes = _run(cluster, ray, args, work, data, load_config, run_training)
    run_dir = work / "runs" / "elastic"

    metrics = read_metrics(run_dir)
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()] \
        if (run_dir / "events.jsonl").exists() else []
    resizes = [e for e in events if e["event"] == "resize"]
    step_s = statistics.median(m["step_ms"] / 1000 for m in metrics.values() if "step_ms" in m)
    print(f"\n{len(resizes)} resize events in {wall:.0f} s ({args.steps} steps, checkpoint every "
          f"{args.checkpoint_every} steps, median step {1000 * step_s:.0f} ms); load average {os.getloadavg()[0]:.2f}")
    lost_per_event = []
    for (what, at), e in zip(changes, resizes):
        # the first optimizer step logged at the new size after the change
        first = min((m["time"] for m in metrics.values() if "step_ms" in m and m["time"] > at
                     and m.get("world_size") == e["new_world_size"]), default=None)
        restart = first - at if first is not None else float("nan")
        redo = e["lost_steps"] * step_s
        lost_per_event.append(restart + redo)
        print(f"  {what}: world size {e['old_world_size']} -> {e['new_world_size']}, grad_accum "
              f"{e['old_grad_accum']} -> {e['new_grad_accum']}: restart -> first step {restart:.1f} s, "
              f"{e['lost_steps']} steps redone ({redo:.1f} s)")
    if lost_per_event:
        loss = statistics.mean(lost_per_event)
        print(f"time lost per resize event: {loss:.1f} s; one node lost every {args.every_minutes:g} min costs "
              f"{2 * loss / (60 * args.every_minutes):.1%} of training time (leave + rejoin = 2 events)")


if __name__ == "__main__":
    main()
