"""The search summary against Tune's own view: the same best trial, and Ctrl-C leaves partial results (exit 130)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from indextts_ray.cli import main
from indextts_ray.config import load_config
from indextts_ray.tune import search
from indextts_ray.tune.search import SearchInterrupted, summarize

REPO = Path(__file__).resolve().parents[2]


def fake_grid(exp: Path, trials: dict[str, dict]):
    """A ResultGrid-like object: per trial its last reported result and Tune's status; metrics.jsonl per run."""
    results, states = [], []
    for name, t in trials.items():
        run = exp / "runs" / name
        run.mkdir(parents=True)
        if t.get("checkpoint", True):  # a finished checkpoint, as latest_checkpoint recognises one
            (run / "step-00000004").mkdir()
            (run / "step-00000004" / "checksums.json").write_text("{}")
        with open(run / "metrics.jsonl", "w") as f:
            for step, acc in enumerate(t["speaker_acc"], 1):
                f.write(json.dumps({"step": step, "speaker_acc": acc, "mel_loss": 1.0, "grl_lambda": 1.0,
                                    "speaker_weight": 0.1}) + "\n")
        results.append(SimpleNamespace(path=str(exp / name), metrics=t["last"], error=None, config={}))
        states.append(SimpleNamespace(path=str(exp / name), status=t["status"]))
    return SimpleNamespace(results=results, _experiment_analysis=SimpleNamespace(trials=states))


class Grid(list):
    pass


def grid_of(ns) -> Grid:
    g = Grid(ns.results)
    g._experiment_analysis = ns._experiment_analysis
    return g


@pytest.fixture
def cfg(tmp_path):
    return load_config(REPO / "configs/tune/demo.yaml", [f"run.output_dir={tmp_path}", "run.name=search",
                                                         "tune.window_steps=2", "train.band.low=0.3",
                                                         "train.band.high=0.6"])


def test_summary_names_the_trial_tune_names(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "_export_best", lambda run_dir, out, best: out)
    exp = tmp_path / "search"
    # t000: stopped by the scheduler at a high reported score, its trace went on out of the band before the stop;
    # t001: finished, in band over its whole trace but reported lower
    g = grid_of(fake_grid(exp, {
        "t000-aaaaaa": {"speaker_acc": [0.4, 0.4, 0.9, 0.9, 0.9, 0.9], "status": "TERMINATED",
                        "last": {"band_score": 0.9, "finished": False}},
        "t001-bbbbbb": {"speaker_acc": [0.4] * 6, "status": "TERMINATED", "last": {"band_score": 0.8, "finished": True}},
    }))
    out = summarize(cfg, exp, g, restored=False)
    tune_best = max(g, key=lambda r: r.metrics["band_score"])  # what Tune's reporter prints
    assert out.best_trial == Path(tune_best.path).name == "t000-aaaaaa"
    assert {r["trial"]: r["band_score"] for r in out.rows} == {"t000-aaaaaa": 0.9, "t001-bbbbbb": 0.8}
    assert "best trial t000-aaaaaa" in (exp / "best.yaml").read_text()
    assert not (exp / "results.partial.json").exists()


def test_the_best_trial_is_one_with_a_checkpoint_to_export(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "_export_best", lambda run_dir, out, best: out)
    exp = tmp_path / "search"
    g = grid_of(fake_grid(exp, {  # t000 ranks first but the scheduler stopped it before its first checkpoint
        "t000-aaaaaa": {"speaker_acc": [0.4] * 2, "status": "TERMINATED", "checkpoint": False,
                        "last": {"band_score": 0.9, "finished": False}},
        "t001-bbbbbb": {"speaker_acc": [0.4] * 6, "status": "TERMINATED", "last": {"band_score": 0.8, "finished": True}},
    }))
    out = summarize(cfg, exp, g, restored=False)
    assert out.best_trial == "t001-bbbbbb"
    assert [(r["trial"], r["checkpoint"]) for r in out.rows] == [("t000-aaaaaa", False), ("t001-bbbbbb", True)]


def test_interrupted_search_writes_partial_results_and_no_best(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "_export_best", lambda run_dir, out, best: pytest.fail("exported a partial search"))
    exp = tmp_path / "search"
    g = grid_of(fake_grid(exp, {
        "t000-aaaaaa": {"speaker_acc": [0.4] * 4, "status": "TERMINATED", "last": {"band_score": 1.0, "finished": True}},
        "t001-bbbbbb": {"speaker_acc": [0.4] * 2, "status": "RUNNING", "last": {"band_score": 1.0, "finished": False}},
    }))
    with pytest.raises(SearchInterrupted, match="1 trials unfinished"):
        summarize(cfg, exp, g, restored=False)
    assert json.loads((exp / "results.partial.json").read_text())["interrupted"] == ["t001-bbbbbb"]
    assert "interrupted" in (exp / "results.csv").read_text() and not (exp / "best.yaml").exists()


def test_ctrl_c_exits_130(monkeypatch, capsys):
    def interrupted(cfg):
        raise SearchInterrupted("search interrupted with 1 trials unfinished; partial results: x/results.csv")

    monkeypatch.setattr(search, "run_tune", interrupted)
    assert main(["tune", "--config", str(REPO / "configs/tune/demo.yaml")]) == 130
    assert "partial results: x/results.csv" in capsys.readouterr().err
