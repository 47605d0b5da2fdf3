"""Integration: spike guard, EMA, early stopping and a 3:1 mixture inside the real loop (2 CPU workers)."""

import json
from pathlib import Path

import pytest
import torch

from indextts_ray.config import load_config
from indextts_ray.data.store import write_shard_file
from indextts_ray.train.export import export_run, latest_checkpoint
from indextts_ray.train.state import STATE_FILE
from indextts_ray.train.tracking import read_metrics
from indextts_ray.train.trainer import run_training
from tests.train.conftest import make_rows
from tests.train.test_train_ray import FAST, REPO, stage_cfg


def _dataset(root: Path, prefix: str, n_train: int, seed: int) -> Path:
    for split, n, s in (("train", n_train, seed), ("val", 8, seed + 100)):
        (root / split).mkdir(parents=True)
        write_shard_file(make_rows(n, 4, s, prefix=f"{prefix}-{split}-"), root / split / "shard-00000.arrow")
    (root / "dataset.json").write_text(json.dumps({"schema_version": 1}))
    return root


def _state(run_dir: Path) -> dict:
    return torch.load(latest_checkpoint(run_dir) / STATE_FILE, weights_only=True)


def test_mixture_ema_early_stopping(ray_local, tmp_path):
    a = _dataset(tmp_path / "emo", "emo", 24, 0)
    b = _dataset(tmp_path / "general", "gen", 72, 1)
    mixture = f"{{datasets: [{{path: {a}, weight: 3}}, {{path: {b}, weight: 1}}]}}"
    cfg = load_config(REPO / "configs/demo/stage1.yaml", [
        f"train.mixture={mixture}", f"run.output_dir={tmp_path}", "run.name=mix", "train.batch.max_tokens=400",
        "train.eval_every_steps=2", "train.checkpoint.every_steps=4", "train.epochs=8", "train.ema.enabled=true",
        "train.ema.decay=0.5", "train.early_stopping.enabled=true", "train.early_stopping.patience=1",
        "train.early_stopping.min_delta=100", "train.logging.sample_ids=true", *FAST])
    run_training(cfg)
    run_dir = tmp_path / "mix"
    state = _state(run_dir)
    # eval at step 2 sets the best, eval at step 4 cannot beat it by 100 -> stop at 4
    assert state["progress"]["step"] == 4
    assert state["progress"]["early_stop"] == {"best": state["progress"]["early_stop"]["best"], "best_step": 2,
                                               "bad_evals": 1, "stopped_at": 4}
    assert state["ema"]["num_updates"] == 4 and state["ema"]["shadow"]
    # best/ follows every evaluation, also the one at step 2 that no checkpoint coincides with
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "best"][0] == 2
    m = read_metrics(run_dir)
    assert {"mix/emo/loss", "mix/emo/epoch_samples", "mix/general/epoch_samples"} <= set(m[4])
    ids = [i for f in (run_dir / "samples").glob("rank*.jsonl") for line in f.read_text().splitlines()
           for i in json.loads(line)["ids"]]
    emo, gen = sum(i.startswith("emo-") for i in ids), sum(i.startswith("gen-") for i in ids)
    assert emo + gen == len(ids) and emo > gen, (emo, gen)
    out = export_run(run_dir, tmp_path / "final")  # early stopping on: final = best/
    assert (out / "gpt.pth").read_bytes() == (run_dir / "best" / "gpt.pth").read_bytes()
    before = latest_checkpoint(run_dir)
    run_training(cfg)  # a stopped run does nothing on rerun
    assert latest_checkpoint(run_dir) == before


@pytest.mark.slow  # ~1 min; skip/reload decisions are unit-tested in test_guard.py by default
def test_guard_skips_and_reloads_in_the_loop(tiny_dataset, ray_local, tmp_path):
    # thresholds so tight that ordinary steps count as spikes: exercises skip + reload on 2 ranks
    cfg = stage_cfg(1, tiny_dataset, tmp_path, "guard", "train.epochs=6", "train.guard.warmup_steps=1",
                    "train.guard.grad_factor=1.0001", "train.guard.loss_factor=1.0001",
                    "train.guard.max_consecutive_skips=1", "train.guard.max_reloads=100",
                    "train.checkpoint.every_steps=2")
    run_training(cfg)
    run_dir = tmp_path / "guard"
    progress = _state(run_dir)["progress"]
    assert progress["skipped_steps"] > 0 and progress["guard"]["skipped"] >= progress["skipped_steps"]
    for rank in (0, 1):
        rows = [json.loads(line) for line in (run_dir / "bad_batches" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert rows and all(r["ids"] and r["reason"] in ("loss_spike", "grad_spike") for r in rows)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()] \
        if (run_dir / "events.jsonl").exists() else []
    reloads = [e for e in events if e["event"] == "guard_reload"]
    assert len(reloads) == progress["guard"]["reloads"] == progress["skipped_steps"]  # K = 1: every skip reloads
    assert reloads[-1]["lr_scale"] == 0.5 ** len(reloads)
    assert _state(run_dir)["scheduler"]["base_lrs"][0] == cfg.train.lr * 0.5 ** len(reloads)
