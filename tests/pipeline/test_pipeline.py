"""The recipe DAG on a tiny synthetic corpus: runs, skips, reruns only what changed, stops on failure."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from indextts_ray.cli import main
from indextts_ray.config import load_config
from indextts_ray.errors import UserError
from indextts_ray.pipeline.runner import StepFailed, pipeline_status, run_pipeline, submit_pipeline
from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[2]
QUICK = ["train.max_steps=2", "train.logging.wandb=false", "train.eval_every_steps=2"]


def pipeline_cfg(work: Path, *extra: str):
    return load_config(REPO / "configs/pipeline/demo.yaml", [
        f"pipeline.work_dir={work}", *[f"pipeline.stage{n}.config={REPO / f'configs/demo/stage{n}.yaml'}" for n in (1, 2, 3)],
        *SMALL, *extra,
    ])


SMALL = ["pipeline.synth.speakers=4", "pipeline.synth.utts_per_speaker=6", "pipeline.speakers.min_samples=2",
         *[f"pipeline.stage{n}.overrides={QUICK}" for n in (1, 2, 3)]]


@pytest.fixture(scope="module")
def work(tmp_path_factory, ray_local):
    """The README's demo command, in-process, with small settings (what `make demo` runs)."""
    work = tmp_path_factory.mktemp("pipe")
    assert main(["demo", "--out", str(work), *SMALL]) == 0
    return work


def test_first_run_produces_everything(work):
    receipts = sorted(p.stem for p in (work / "receipts").glob("*.json"))
    assert receipts == sorted(["synth", "prepare", "speakers", "stage1", "stage2", "stage3", "export", "eval"])
    assert (work / "export" / "gpt.pth").exists() and (work / "export" / "config.yaml").exists()
    assert (work / "report" / "report.md").exists() and (work / "report" / "report.html").exists()
    assert (work / "speaker_mapping.json").exists()
    states = {name: state for name, state, _ in pipeline_status(pipeline_cfg(work))}
    assert set(states.values()) == {"done"}


def test_second_run_skips_everything(work):
    assert run_pipeline(pipeline_cfg(work)) == []


STAGE2_LR = f"pipeline.stage2.overrides={[*QUICK, 'train.lr=5e-4']}"


def test_changing_one_stage_reruns_it_and_dependents_only(work):
    cfg = pipeline_cfg(work, STAGE2_LR)
    states = {name: state for name, state, _ in pipeline_status(cfg)}
    assert states["stage1"] == "done" and states["stage2"] == "stale" and states["stage3"] == "stale"
    assert run_pipeline(cfg) == ["stage2", "stage3", "export", "eval"]


def test_failed_step_stops_dependents_with_clear_message(work):
    cfg = pipeline_cfg(work, STAGE2_LR, f"pipeline.stage3.overrides={[*QUICK, 'train.freeze=[no_such_module]']}")
    with pytest.raises(StepFailed) as e:
        run_pipeline(cfg)
    msg = str(e.value)
    assert "step 'stage3' failed" in msg and "no_such_module" in msg and "not run: export" in msg
    assert isinstance(e.value, UserError)  # caught in the driver before any worker starts: exit code 2
    assert json.loads((work / "receipts" / "stage3.failed.json").read_text())["error"].count("no_such_module")
    states = {name: state for name, state, _ in pipeline_status(cfg)}
    assert states["stage3"] == "failed" and states["export"] == "stale"


def test_stage2_can_be_the_best_trial_of_a_tune_search(work):
    tune = ["tune.num_samples=1", "tune.max_steps=4", "tune.window_steps=2", "tune.grace_steps=2",
            "tune.poll_seconds=0.5", "train.logging.every_steps=1", "train.eval_every_steps=4",
            "train.checkpoint.every_steps=4", "train.logging.wandb=false"]
    cfg = pipeline_cfg(work, f"pipeline.stage2.config={REPO / 'configs/tune/demo.yaml'}", "pipeline.stage2.tune=true",
                       f"pipeline.stage2.overrides={tune}")
    assert run_pipeline(cfg, until="stage2") == ["stage2"]
    receipt = json.loads((work / "receipts" / "stage2.json").read_text())
    best = receipt["metrics"]["best_trial"]
    assert receipt["metrics"]["trials"] == 1 and receipt["metrics"]["steps"] == 4
    source = json.loads((work / "runs" / "stage2" / "final" / "tune_source.json").read_text())
    assert source["trial"] == best and (work / "runs" / "stage2-tune" / "band.png").exists()
    assert {n: s for n, s, _ in pipeline_status(cfg)}["stage3"] == "stale"  # Stage 3 starts from the new result


def test_submit_runs_steps_as_ray_jobs(tmp_path, monkeypatch):
    """A real head started by `ray start` from another cwd (in a child process, so stopping it touches nothing
    else), as users start one: venv on the PATH. The submitter, in a third directory, gives a relative work_dir;
    the synth step runs from the job's working_dir bundle, no entrypoint names a path of the submitter, and the
    second submit finds the receipt and submits nothing."""
    gcs, port, agent, agent_grpc, metrics, env_agent, client = free_ports(7)
    # `--block` ties the head's processes to this child: terminating it stops this cluster only; its own
    # temp dir keeps its address file from redirecting other `ray.init()` calls on this machine
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    head_cwd, submit_cwd = tmp_path / "head", tmp_path / "submitter"
    head_cwd.mkdir()
    submit_cwd.mkdir()
    venv_bin = Path(sys.executable).parent
    head = subprocess.Popen(
        [str(venv_bin / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1",
         f"--temp-dir={temp_dir}", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}",
         # the session's own local Ray already holds the default agent ports: a clash leaves this head with no
         # job agent ("No available agent to submit job")
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
         f"--ray-client-server-port={client}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=head_cwd,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "RAY_ADDRESS": "",
             "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"})
    try:
        deadline = time.time() + 300  # a loaded 2-core box can take minutes to start a head
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2)
                break
            except OSError:
                time.sleep(1)
        # as users do: token auth is on for the job server; the client reads ~/.ray/auth_token in token mode
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.chdir(submit_cwd)
        cfg_path = REPO / "configs/pipeline/demo.yaml"
        overrides = ["pipeline.work_dir=out", "pipeline.synth.speakers=2", "pipeline.synth.utts_per_speaker=3"]
        cfg = load_config(cfg_path, overrides)
        address = f"http://127.0.0.1:{port}"
        jobs = submit_pipeline(cfg, cfg_path, overrides, address, until="synth", timeout_s=240)
        assert len(jobs) == 1 and jobs[0].startswith("indextts-synth-")
        assert (submit_cwd / "out" / "corpus" / "manifest.jsonl").exists()
        assert {n: s for n, s, _ in pipeline_status(cfg)}["synth"] == "done"
        assert submit_pipeline(cfg, cfg_path, overrides, address, until="synth") == []
        from ray.job_submission import JobSubmissionClient

        entrypoints = [j.entrypoint for j in JobSubmissionClient(address).list_jobs()]
        assert entrypoints == ["python jobs/synth.py --config pipeline.yaml"]
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path / "gpt.pth", map_location="cpu", weights_only=True)


def _differ(a: dict, b: dict) -> bool:
    import torch

    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_reruns_train_fresh_runs_on_the_new_weights(work):
    """Change Stage 1 -> Stages 2 and 3 retrain from its new export (their receipts hold its hash, their weights
    change); change only Stage 3 -> it trains all its steps (a fresh run, not a resume of the finished one)."""
    from indextts_ray.pipeline.receipts import content_hash
    from indextts_ray.train.tracking import read_metrics

    run_pipeline(pipeline_cfg(work))  # back to the fixture's config (earlier tests changed Stage 2/3)
    old = {n: _weights(work / "runs" / f"stage{n}" / "final") for n in (1, 2, 3)}
    old_init = json.loads((work / "receipts" / "stage2.json").read_text())["inputs"]["init_checkpoint"]
    t0 = time.time()
    cfg = pipeline_cfg(work, f"pipeline.stage1.overrides={[*QUICK, 'train.lr=1e-3']}")
    assert run_pipeline(cfg) == ["stage1", "stage2", "stage3", "export", "eval"]
    new_init = json.loads((work / "receipts" / "stage2.json").read_text())["inputs"]["init_checkpoint"]
    assert new_init == content_hash(work / "runs" / "stage1" / "final") != old_init
    stage3 = json.loads((work / "receipts" / "stage3.json").read_text())["inputs"]["init_checkpoint"]
    assert stage3 == content_hash(work / "runs" / "stage2" / "final")
    for n in (1, 2, 3):
        assert _differ(old[n], _weights(work / "runs" / f"stage{n}" / "final")), f"stage{n} kept its old weights"
        metrics = read_metrics(work / "runs" / f"stage{n}")
        assert sorted(metrics)[-1] == 2 and all(m["time"] > t0 for m in metrics.values())  # every step trained now

    before = _weights(work / "runs" / "stage3" / "final")
    t1 = time.time()
    cfg = pipeline_cfg(work, f"pipeline.stage1.overrides={[*QUICK, 'train.lr=1e-3']}",
                       f"pipeline.stage3.overrides={[*QUICK, 'train.lr=5e-4']}")
    assert run_pipeline(cfg) == ["stage3", "export", "eval"]
    metrics = read_metrics(work / "runs" / "stage3")
    assert sorted(metrics)[-1] == 2 and all(m["time"] > t1 for m in metrics.values())
    assert _differ(before, _weights(work / "runs" / "stage3" / "final"))


def test_eval_options_reach_the_emotion_judges(tmp_path, monkeypatch):
    """`pipeline.eval.emotion_control.*` (judge_code_vectors included) travel into the eval's options."""
    import indextts_ray.eval.evaluate as evaluate
    from indextts_ray.pipeline.steps import run_eval

    seen = {}

    def fake_report(exports, data_dir, out, options):
        seen.update(exports=exports, data_dir=data_dir, options=options)
        return {"flat": {}}

    monkeypatch.setattr(evaluate, "evaluate_and_report", fake_report)
    for flag in (False, True):
        cfg = pipeline_cfg(tmp_path, f"pipeline.eval.emotion_control.judge_code_vectors={str(flag).lower()}",
                           "pipeline.eval.emotion_control.epochs=40")
        run_eval(cfg)
        control = seen["options"].emotion_control
        assert (control.judge_code_vectors, control.epochs, control.splits) == (flag, 40, ("train", "val"))
    assert load_config(REPO / "configs/pipeline/demo.yaml").pipeline.eval.emotion_control.judge_code_vectors is False
