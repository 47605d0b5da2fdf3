"""Elastic Stage-1 run on a simulated 2-node cluster: a node leaves mid-epoch, the run goes on with 1 worker.

Run in its own process (it owns a `ray.cluster_utils.Cluster`):
    python tests/train/elastic_run.py DATA_DIR OUT_DIR [--rejoin]
Prints one JSON line with what the test checks.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")  # scale-down waits for this (RAY_NOTES)


def main(data_dir: str, out_dir: str, rejoin: bool) -> None:
    from indextts_ray.ray_connect import simulated_cluster

    with simulated_cluster(num_cpus=1) as cluster:  # torn down whatever happens, RAY_ADDRESS pointed at it
        run(cluster, data_dir, out_dir, rejoin)


def run(cluster, data_dir: str, out_dir: str, rejoin: bool) -> None:
    import ray

    from indextts_ray.config import load_config
    from indextts_ray.train.trainer import run_training

    nodes = [cluster.add_node(num_cpus=1, resources={"trainslot": 1}) for _ in range(2)]
    ray.init(address=cluster.address)
    cfg = load_config(REPO / "configs/demo/stage1.yaml", [
        f"train.data_dir={data_dir}", f"run.output_dir={out_dir}", "run.name=elastic", "train.epochs=2",
        "train.batch.max_tokens=400", "train.checkpoint.every_steps=2", "train.eval_every_steps=100",
        "train.logging.every_steps=1", "train.logging.wandb=false", "train.logging.sample_ids=true",
        "train.warmup_steps=2",  # as the reference run (tests/train/test_train_ray.py FAST)
        "train.scaling.num_workers=[1, 2]", "train.scaling.cpus_per_worker=0.5",
        "train.scaling.resources_per_worker={trainslot: 1}", "train.scaling.elastic_monitor_interval_s=2",
    ])
    run_dir = Path(out_dir) / "elastic"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", run_training(cfg)), daemon=True)
    thread.start()
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 180
    while time.time() < deadline and not (snapshot.exists() and "step-00000002" in snapshot.read_text()):
        time.sleep(0.2)
    cluster.remove_node(nodes[1])
    removed_at = time.time()
    if rejoin:
        time.sleep(20)
        cluster.add_node(num_cpus=1, resources={"trainslot": 1})
    thread.join(timeout=400)
    print(json.dumps({"finished": "r" in result, "removed_at": removed_at}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--rejoin" in sys.argv)
