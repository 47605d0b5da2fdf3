"""Content-addressed reruns, running steps in `status`, and `submit` (bundle, --force) without a cluster: cheap."""

import json
import os
import sys
from pathlib import Path

import yaml

from indextts_ray.config import load_config
from indextts_ray.pipeline import runner
from indextts_ray.pipeline.receipts import Receipts, content_hash
from indextts_ray.pipeline.steps import RUN_KEY, StepContext, build_graph, claim_run_dir, stage_config

REPO = Path(__file__).resolve().parents[2]


def demo_cfg(work: Path, *extra: str):
    return load_config(REPO / "configs/pipeline/demo.yaml", [
        f"pipeline.work_dir={work}", "pipeline.synth.speakers=2", "pipeline.synth.utts_per_speaker=3",
        *[f"pipeline.stage{n}.config={REPO / f'configs/demo/stage{n}.yaml'}" for n in (1, 2, 3)],
        f"pipeline.stage3.overrides={['train.max_steps=7']}", *extra])


def keys(cfg) -> dict[str, str]:
    return {n: k for n, (k, _) in runner.step_keys(cfg, build_graph(cfg)).items()}


def _rewrite_same_size_and_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_stage_keys_hold_the_content_of_init_checkpoint_and_data(tmp_path):
    init = tmp_path / "gpt.pth"
    init.write_bytes(b"a" * 64)
    cfg = demo_cfg(tmp_path / "work", f"pipeline.stage1.overrides={[f'train.init_checkpoint={init}']}")
    before = keys(cfg)
    _rewrite_same_size_and_mtime(init, b"b" * 64)  # same path, size and mtime: only the bytes differ
    after = keys(cfg)
    assert after["stage1"] != before["stage1"] and after["stage3"] != before["stage3"]
    assert after["prepare"] == before["prepare"]

    # Stage 2 starts from Stage 1's export: new weights there = a new Stage-2 (and Stage-3) key
    final = stage_config(cfg, 2).train.init_checkpoint
    Path(final).mkdir(parents=True)
    (Path(final) / "gpt.pth").write_bytes(b"w1")
    k1 = keys(cfg)
    (Path(final) / "gpt.pth").write_bytes(b"w2")
    k2 = keys(cfg)
    assert k2["stage1"] == k1["stage1"] and k2["stage2"] != k1["stage2"] and k2["stage3"] != k1["stage3"]

    # and so do the prepared data (dataset.json lists every shard's sha256)
    ds = tmp_path / "work" / "prepared" / "dataset.json"
    ds.parent.mkdir(parents=True)
    ds.write_text('{"shards": 1}')
    k3 = keys(cfg)
    assert k3["stage1"] != k2["stage1"] and k3["stage2"] != k2["stage2"]
    _, inputs = runner.step_keys(cfg, build_graph(cfg))["stage2"]
    assert inputs["init_checkpoint"] == content_hash(final) and inputs["data"] == {str(ds.parent): content_hash(ds)}


def test_a_run_dir_of_another_key_is_cleared_never_resumed(tmp_path):
    run = tmp_path / "stage2"
    (run / "step-00000024").mkdir(parents=True)
    (run / "finished.json").write_text("{}")
    claim_run_dir(run, StepContext("k1"))  # unmarked (an older run): starts over
    assert not (run / "finished.json").exists()
    assert json.loads((run / RUN_KEY).read_text())["key"] == "k1"
    (run / "step-00000010").mkdir()
    claim_run_dir(run, StepContext("k1"))  # same key (an interrupted run): kept, the trainer resumes it
    assert (run / "step-00000010").exists()
    claim_run_dir(run, StepContext("k2", {"init_checkpoint": "abc"}))  # changed key: fresh
    assert not (run / "step-00000010").exists()
    assert json.loads((run / RUN_KEY).read_text()) == {"key": "k2", "inputs": {"init_checkpoint": "abc"}}
    (run / "step-00000010").mkdir()
    claim_run_dir(run, StepContext("k2", fresh=True))  # --force: fresh as well
    assert not (run / "step-00000010").exists()


def test_status_shows_a_running_step_with_job_id_and_progress(tmp_path):
    cfg = demo_cfg(tmp_path)
    k = keys(cfg)
    receipts = Receipts(tmp_path)
    receipts.mark_running("stage3", k["stage3"], job_id="indextts-stage3-abc")
    run = tmp_path / "runs" / "stage3"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "mel_loss": 1.0}) + "\n")
    states = {n: (s, d) for n, s, d in runner.pipeline_status(cfg)}
    assert states["stage3"][0] == "running"
    assert "job indextts-stage3-abc" in states["stage3"][1] and "step 5/7" in states["stage3"][1]
    assert states["stage2"][0] == "pending"
    # a marker of a process on this host that is gone is not "running"
    receipts.mark_running("stage2", k["stage2"])
    marker = receipts.dir / "stage2.running.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "pid": 2 ** 22 + 12345}))
    assert {n: s for n, s, _ in runner.pipeline_status(cfg)}["stage2"] == "pending"


class FakeJobs:
    """A job server that runs each submitted step at once, from its working_dir, as a job would."""

    def __init__(self, monkeypatch):
        self.submitted: list[dict] = []
        self.monkeypatch = monkeypatch

    def submit_job(self, entrypoint, submission_id, runtime_env):
        self.submitted.append({"entrypoint": entrypoint, "runtime_env": runtime_env})
        argv = entrypoint.split()
        assert argv[:2] == ["python", "jobs/synth.py"]
        wd = Path(runtime_env["working_dir"])
        with self.monkeypatch.context() as m:
            m.chdir(wd)
            cfg = load_config(argv[argv.index("--config") + 1])
            runner.run_one(cfg, "synth", fresh="--force" in argv, job_id=submission_id)
        return submission_id

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        return JobStatus.SUCCEEDED

    def get_job_logs(self, job_id):
        return ""


def test_submit_ships_a_bundle_without_submitter_paths_and_honours_force(tmp_path, monkeypatch):
    jobs = FakeJobs(monkeypatch)
    monkeypatch.setattr(runner, "_client", lambda address: jobs)
    monkeypatch.chdir(tmp_path)
    overrides = ["pipeline.work_dir=rel_work", "pipeline.synth.speakers=2", "pipeline.synth.utts_per_speaker=3"]
    cfg_path = REPO / "configs/pipeline/demo.yaml"
    cfg = load_config(cfg_path, overrides)
    assert len(runner.submit_pipeline(cfg, cfg_path, overrides, "http://x", until="synth")) == 1
    assert (tmp_path / "rel_work" / "corpus" / "manifest.jsonl").exists()  # work_dir resolved once, here
    job = jobs.submitted[0]
    for path in (str(REPO), str(tmp_path), sys.executable):
        assert path not in job["entrypoint"]
    assert job["entrypoint"] == "python jobs/synth.py --config pipeline.yaml"
    assert "PYTHONPATH" not in job["runtime_env"]["env_vars"]
    assert runner.submit_pipeline(cfg, cfg_path, overrides, "http://x", until="synth") == []
    assert len(runner.submit_pipeline(cfg, cfg_path, overrides, "http://x", until="synth", force=("synth",))) == 1
    assert jobs.submitted[-1]["entrypoint"].endswith("--force")
    receipt = json.loads((tmp_path / "rel_work" / "receipts" / "synth.json").read_text())
    assert receipt["job_id"].startswith("indextts-synth-")


def test_bundle_config_resolves_paths_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs/pipeline/demo.yaml", ["pipeline.work_dir=w", "data.tokenizer=tok/bpe.model"])
    bundle = runner.job_bundle(cfg, tmp_path / "b")
    raw = yaml.safe_load((bundle / "pipeline.yaml").read_text())
    assert raw["pipeline"]["work_dir"] == str(tmp_path / "w")
    assert raw["data"]["tokenizer"] == str(tmp_path / "tok" / "bpe.model")
    assert raw["pipeline"]["stage1"] == {**raw["pipeline"]["stage1"], "config": "stages/stage1.yaml", "overrides": []}
    assert (bundle / "stages" / "stage3.yaml").exists() and (bundle / "jobs" / "_entry.py").exists()
