"""Resume checks what it resumes (no Ray): plan and architecture changes are refused in the driver with one line;
other changes are applied, λ/weight included when band control is off."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from indextts_ray.config import load_config
from indextts_ray.errors import UserError
from indextts_ray.io_utils import sha256_file
from indextts_ray.train.band import controller_for
from indextts_ray.train.loop import resolve_adversary
from indextts_ray.train.resume import check_resume_config
from indextts_ray.train.state import STATE_FILE, RunState
from indextts_ray.train.trainer import absolutize, run_training

REPO = Path(__file__).resolve().parents[2]


def _cfg(data: Path, out: Path, *extra: str):
    return absolutize(load_config(REPO / "configs/demo/stage2.yaml", [
        f"train.data_dir={data}", f"run.output_dir={out}", "run.name=r", "train.batch.max_tokens=400",
        f"train.speaker_mapping={data / 'speaker_mapping.json'}", "train.init_checkpoint=null", *extra]))


def _fake_checkpoint(cfg, step: int = 5) -> Path:
    """A step-* dir as the loop writes it, with just what the driver reads (run state and resolved config)."""
    ckpt = Path(cfg.run.output_dir) / cfg.run.name / f"step-{step:08d}"
    ckpt.mkdir(parents=True)
    torch.save({"progress": asdict(RunState(step=step)), "config": json.dumps(cfg.model_dump(mode="json"))},
               ckpt / STATE_FILE)
    (ckpt / "checksums.json").write_text(json.dumps({STATE_FILE: sha256_file(ckpt / STATE_FILE)}))
    return ckpt


@pytest.mark.parametrize("override, field", [
    ("train.batch.max_tokens=500", "train.batch.max_tokens"),
    ("train.batch.shuffle_window=64", "train.batch.shuffle_window"),
    ("run.seed=7", "run.seed"),
    ("data.prompt.max_seconds=3", "data.prompt.max_seconds"),
    ("train.batch.grad_accum=2", "train.batch.grad_accum x the largest train.scaling.num_workers"),
    ("train.scaling.num_workers=[1, 4]", "train.batch.grad_accum x the largest train.scaling.num_workers"),
])
def test_plan_change_refused_in_the_driver(tiny_dataset, tmp_path, override, field):
    _fake_checkpoint(_cfg(tiny_dataset, tmp_path))
    with pytest.raises(UserError) as e:
        run_training(_cfg(tiny_dataset, tmp_path, override))  # no Ray: refused before it starts
    message = str(e.value)
    assert "\n" not in message and f": {field}" in message and "step-00000005" in message
    assert "another run.name" in message and str(tmp_path / "r") in message


def test_other_changes_are_applied_and_listed(tiny_dataset, tmp_path):
    saved = _cfg(tiny_dataset, tmp_path).model_dump(mode="json")
    cfg = _cfg(tiny_dataset, tmp_path, "train.max_steps=40", "train.lr=5e-4", "train.grl_lambda=2.0",
               "train.band.enabled=false", "train.eval_every_steps=7", "train.scaling.num_workers=[1, 2]")
    assert check_resume_config(saved, cfg, tmp_path) == [
        "train.band.enabled true -> false", "train.eval_every_steps 100 -> 7", "train.grl_lambda 0.3 -> 2.0",
        "train.lr 0.002 -> 0.0005", "train.max_steps null -> 40", "train.scaling.num_workers 2 -> [1, 2]"]
    assert check_resume_config(saved, _cfg(tiny_dataset, tmp_path), tmp_path) == []


def test_changed_lambda_and_weight_win_on_resume_without_band_control(tiny_dataset, tmp_path):
    tc = _cfg(tiny_dataset, tmp_path, "train.band.enabled=false", "train.grl_lambda=2.0", "train.loss.speaker=0.3").train
    state = RunState(grl_lambda=1.0, speaker_weight=0.1)  # what the checkpoint trained with
    notes = resolve_adversary(state, tc, controller_for(tc), resumed=True)
    assert (state.grl_lambda, state.speaker_weight) == (2.0, 0.3)
    assert notes == ["resume: train.grl_lambda 1 -> 2 (the config's value; band control is off)",
                     "resume: train.loss.speaker 0.1 -> 0.3 (the config's value; band control is off)"]
    assert resolve_adversary(state, tc, None, resumed=True) == []  # unchanged: nothing to log


def test_band_control_continues_or_restarts_on_resume(tiny_dataset, tmp_path):
    tc = _cfg(tiny_dataset, tmp_path).train
    band = controller_for(tc)
    for step in range(1, 31):  # speaker accuracy far above the band: λ rises
        band.update(step, 0.95, 1.0)
    state = RunState(grl_lambda=band.grl_lambda, speaker_weight=band.speaker_weight, band=band.state_dict())
    assert state.grl_lambda > tc.grl_lambda
    notes = resolve_adversary(state, tc, controller_for(tc), resumed=True)
    assert state.grl_lambda == band.grl_lambda and notes[0].startswith("band control resumed")
    changed = _cfg(tiny_dataset, tmp_path, "train.grl_lambda=2.0").train
    notes = resolve_adversary(state, changed, controller_for(changed), resumed=True)
    assert state.grl_lambda == 2.0 and "restarts from train.grl_lambda=2" in notes[0]


def test_restart_deletes_the_run_and_refuses_a_folder_that_is_not_one(tiny_dataset, tmp_path):
    from indextts_ray.train.resume import restart_run

    cfg = _cfg(tiny_dataset, tmp_path)
    run_dir = _fake_checkpoint(cfg).parent
    with pytest.raises(UserError, match="rerun with --restart"):
        run_training(_cfg(tiny_dataset, tmp_path, "run.seed=7"))
    (run_dir / "config.resolved.yaml").write_text("# written by the driver\n")
    assert restart_run(run_dir) and not run_dir.exists()
    assert not restart_run(run_dir)  # nothing there: nothing to do
    other = tmp_path / "not-a-run"
    (other / "keep").mkdir(parents=True)
    with pytest.raises(UserError, match="not a training run folder"):
        restart_run(other)
    assert (other / "keep").is_dir()


def test_train_cli_passes_restart(monkeypatch, tiny_dataset, tmp_path):
    import argparse

    from indextts_ray.commands import train_cmd

    seen = {}
    monkeypatch.setattr("indextts_ray.train.trainer.run_training", lambda cfg, restart=False: seen.update(r=restart))
    monkeypatch.setattr("indextts_ray.train.export.export_run", lambda src, dst: dst)
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    args = p.parse_args(["--config", str(REPO / "configs/demo/stage1.yaml"), "--restart",
                         f"train.data_dir={tiny_dataset}", f"run.output_dir={tmp_path}"])
    assert train_cmd.run(args) == 0 and seen == {"r": True}
