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
    """A real local head with its job server (in a child process, so stopping it touches nothing else);
    the synth step goes through `JobSubmissionClient`, the second submit finds its receipt and submits nothing."""
    gcs, port, agent, agent_grpc, metrics, env_agent, client = free_ports(7)
    # `--block` ties the head's processes to this child: terminating it stops this cluster only; its own
    # temp dir keeps its address file from redirecting other `ray.init()` calls on this machine
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1",
         f"--temp-dir={temp_dir}", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}",
         # the session's own local Ray already holds the default agent ports: a clash leaves this head with no
         # job agent ("No available agent to submit job")
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
         f"--ray-client-server-port={client}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
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
        cfg_path = REPO / "configs/pipeline/demo.yaml"
        overrides = [f"pipeline.work_dir={tmp_path}", "pipeline.synth.speakers=2", "pipeline.synth.utts_per_speaker=3"]
        cfg = load_config(cfg_path, overrides)
        jobs = submit_pipeline(cfg, cfg_path, overrides, f"http://127.0.0.1:{port}", until="synth", timeout_s=240)
        assert len(jobs) == 1 and jobs[0].startswith("indextts-synth-")
        assert (tmp_path / "corpus" / "manifest.jsonl").exists()
        assert {n: s for n, s, _ in pipeline_status(cfg)}["synth"] == "done"
        assert submit_pipeline(cfg, cfg_path, overrides, f"http://127.0.0.1:{port}", until="synth") == []
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
