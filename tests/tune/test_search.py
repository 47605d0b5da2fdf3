"""The Stage-2 search: space validation, trial naming, PBT lineage, and a real 2-trial Tune run that resumes."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from indextts_ray.config import load_config
from indextts_ray.errors import ConfigError, UserError
from indextts_ray.train.export import export_run
from indextts_ray.tune.config import TuneConfig
from indextts_ray.tune.search import (
    _lineage,
    check_space,
    check_state_api,
    param_space,
    run_tune,
    trial_config,
    trial_name,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs/tune/demo.yaml"


def _search_cfg(data: Path, out: Path, name: str, *extra: str):
    """The demo search on the tiny shards: Stage 2 from scratch, 2 workers at 0.45 CPU, every step logged."""
    return load_config(DEMO, [
        f"train.data_dir={data}", f"run.output_dir={out}", f"run.name={name}",
        f"train.speaker_mapping={data / 'speaker_mapping.json'}", "train.init_checkpoint=null",
        "train.batch.max_tokens=400", "train.logging.every_steps=1", "train.warmup_steps=2",
        "train.scaling.cpus_per_worker=0.45", *extra])


def test_space_keys_and_ranges_are_checked_against_the_schema():
    check_space(load_config(DEMO))
    with pytest.raises(ConfigError, match=r"did you mean 'train.grl_lambda'"):
        check_space(load_config(DEMO, ["tune.space={train.grl_lamda: {kind: uniform, low: 1, high: 2}}"]))
    with pytest.raises(ConfigError, match=r"train.band.ki_lambda"):
        check_space(load_config(DEMO, ["tune.space={train.band.ki_lambda: {kind: choice, values: [-1.0]}}"]))
    with pytest.raises(ConfigError, match="multiple of train.checkpoint.every_steps"):
        check_space(load_config(DEMO, ["tune.scheduler=pbt", "tune.perturbation_interval=30"]))


def test_tune_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="needs low and high"):
        TuneConfig(space={"train.lr": {"kind": "loguniform", "low": 1e-4}})
    with pytest.raises(ValueError, match="multiple of window_steps"):
        TuneConfig(scheduler="pbt", perturbation_interval=25, window_steps=10, space={
            "train.lr": {"kind": "uniform", "low": 1e-4, "high": 1e-3}})
    with pytest.raises(ValueError, match="pb2 models continuous values only"):
        TuneConfig(scheduler="pb2", space={"train.lr": {"kind": "choice", "values": [1e-4]}})


def test_param_space_is_nested_like_the_config():
    space = param_space(load_config(DEMO).tune)
    assert set(space["train"]) == {"grl_lambda", "loss", "lr", "band"}
    assert set(space["train"]["band"]) == {"ki_lambda", "ki_weight"}


def test_trial_names_are_index_plus_hash_of_the_sampled_values():
    a = SimpleNamespace(trial_id="ab12c_00003", config={"train": {"lr": 1e-3}})
    b = SimpleNamespace(trial_id="zz99z_00003", config={"train": {"lr": 1e-3}})
    c = SimpleNamespace(trial_id="ab12c_00003", config={"train": {"lr": 2e-3}})
    assert trial_name(a) == trial_name(b) and trial_name(a).startswith("t003-")
    assert trial_name(a) != trial_name(c)


def test_trial_config_and_pbt_lineage(tmp_path):
    base = load_config(DEMO, ["tune.max_steps=40"]).model_dump(mode="json")
    cfg = trial_config(base, {"train": {"grl_lambda": 2.5}}, {"run": "t000-x", "offset": 0}, tmp_path)
    assert (cfg.run.name, cfg.run.output_dir, cfg.train.max_steps, cfg.train.grl_lambda) == \
        ("t000-x", str(tmp_path), 40, 2.5)
    assert _lineage("t001-y", None, None, tmp_path) == [{"run": "t001-y", "offset": 0}]
    own = {"trial": "t001-y", "step": 20, "segments": [{"run": "t001-y", "offset": 0}]}
    assert _lineage("t001-y", own, None, tmp_path) == own["segments"]
    donor_ckpt = tmp_path / "ckpt"
    (donor_ckpt / "export").mkdir(parents=True)
    (donor_ckpt / "export" / "gpt.pth").write_text("weights")
    donor = {"trial": "t000-x", "step": 20, "segments": [{"run": "t000-x", "offset": 0}]}
    segments = _lineage("t001-y", donor, donor_ckpt, tmp_path)
    init = tmp_path / "t001-y-s000020.init"
    assert segments == [{"run": "t000-x", "offset": 0}, {"run": "t001-y-s000020", "offset": 20, "init": str(init)}]
    assert (init / "gpt.pth").read_text() == "weights"
    seg = trial_config(base, {}, segments[-1], tmp_path)
    assert (seg.train.max_steps, seg.train.init_checkpoint, seg.train.warmup_steps) == (20, str(init), 0)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_schedulers_that_stop_trials_need_the_state_api(ray_local, monkeypatch):
    check_state_api(TuneConfig(scheduler="pbt", space={"train.lr": {"kind": "loguniform", "low": 1e-4, "high": 1e-3}}))

    def unavailable(**_):
        raise ConnectionError("no dashboard")

    monkeypatch.setattr("ray.util.state.list_actors", unavailable)
    with pytest.raises(UserError, match="tune.scheduler=asha needs Ray's State API"):
        check_state_api(TuneConfig(scheduler="asha"))
    check_state_api(TuneConfig(scheduler="none"))  # stops nothing: fine without it


def test_the_state_api_check_asks_this_cluster_not_the_address_file(ray_local, tmp_path, monkeypatch):
    """Another local Ray started later (a benchmark beside the tests) owns Ray's address file; without
    RAY_ADDRESS the State API followed it, to another or a dead instance."""
    from indextts_ray.ray_connect import address_file
    from tests.conftest import free_ports

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    Path(address_file()).parent.mkdir(parents=True, exist_ok=True)
    Path(address_file()).write_text(f"127.0.0.1:{free_ports(1)[0]}")  # nothing listens there
    check_state_api(TuneConfig(scheduler="asha"))


def test_tiny_search_completes_then_resumes(tiny_dataset, ray_local, tmp_path):
    """2 trials (a grid over init_checkpoint): the second fails until its checkpoint exists; a rerun resumes it
    without retraining the first, and a third run finds everything done."""
    missing = tmp_path / "stage2-init"
    cfg = _search_cfg(tiny_dataset, tmp_path, "search",
        "train.eval_every_steps=6", "train.checkpoint.every_steps=6",
        "tune.num_samples=1", "tune.max_steps=6", "tune.window_steps=2", "tune.grace_steps=2",
        "tune.poll_seconds=0.5",
        f"tune.space={{train.init_checkpoint: {{kind: grid, values: [null, {missing}]}}}}")
    first = run_tune(cfg)
    exp = tmp_path / "search"
    status = {r["trial"]: r["status"] for r in first.rows}
    assert not first.restored and sorted(status.values()) == ["done", "error"], status
    done = next(t for t, s in status.items() if s == "done")
    assert first.best_trial == done and (exp / "final" / "gpt.pth").exists()
    assert (exp / "band.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_config(first.best_config)
    assert best.run.name == "search-best" and best.train.init_checkpoint is None
    with open(exp / "results.csv") as f:
        assert [r["trial"] for r in csv.DictReader(f)] == sorted(status)
    metrics = exp / "runs" / done / "metrics.jsonl"
    n_done = _lines(metrics)
    assert n_done >= 6

    export_run(exp / "runs" / done, missing)  # now the second trial's init checkpoint exists
    second = run_tune(cfg)
    assert second.restored and {r["status"] for r in second.rows} == {"done"}
    assert _lines(metrics) == n_done  # the finished trial was not trained again
    resumed = next(r for r in second.rows if r["trial"] != done)
    assert resumed["steps"] == 6 and resumed["param:train.init_checkpoint"] == str(missing)
    n_resumed = _lines(exp / "runs" / resumed["trial"] / "metrics.jsonl")

    third = run_tune(cfg)
    assert third.restored and [r["band_score"] for r in third.rows] == [r["band_score"] for r in second.rows]
    assert _lines(exp / "runs" / resumed["trial"] / "metrics.jsonl") == n_resumed
    assert json.loads((exp / "final" / "tune_source.json").read_text())["trial"] == third.best_trial

    changed = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"mel_penalty": 2.0})})
    with pytest.raises(UserError, match="another config"):
        run_tune(changed)


def test_a_trial_the_scheduler_stops_frees_its_workers_for_the_next(tiny_dataset, ray_local, tmp_path, monkeypatch):
    """The scheduler stops the first trial while its TorchTrainer runs (2 workers x 0.45 of the 2 CPUs): the
    second trial can only start once those are free, and when the search ends nothing is left reserved."""
    import time

    import ray
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class StopFirstAtStep1(FIFOScheduler):  # what ASHA does to a hopeless trial, made deterministic
        def on_trial_result(self, tune_controller, trial, result):
            first = trial.trial_id == min(t.trial_id for t in tune_controller.get_trials())
            return TrialScheduler.STOP if first and result["step"] >= 1 else TrialScheduler.CONTINUE

    monkeypatch.setattr("indextts_ray.tune.search._scheduler", lambda tc: StopFirstAtStep1())
    cfg = _search_cfg(tiny_dataset, tmp_path, "stops",
        "train.eval_every_steps=100", "train.checkpoint.every_steps=100",
        "tune.num_samples=2", "tune.max_steps=12", "tune.window_steps=1", "tune.grace_steps=1",
        "tune.poll_seconds=0.2", "tune.space={train.lr: {kind: loguniform, low: 1.0e-4, high: 1.0e-3}}")
    out = run_tune(cfg)
    status = {r["trial"]: (r["status"], r["steps"]) for r in out.rows}
    first, second = sorted(status)
    assert status[first][0] == "stopped" and status[second] == ("done", 12), status
    # stopped before its first checkpoint: never the best trial, whatever it scored, as it has no weights to export
    assert [r["checkpoint"] for r in sorted(out.rows, key=lambda r: r["trial"])] == [False, True]
    assert out.best_trial == second and (out.export / "gpt.pth").exists()
    # stopped while training: its run never finished (so its workers were running when the stop came)
    assert not (tmp_path / "stops" / "runs" / first / "finished.json").exists()
    deadline = time.time() + 60  # Ray Train's placement-group cleaner polls: give it a moment
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert live == []
