"""The stage report end to end on tiny exports + tiny shards + fake training metrics: every plot, both formats,
the CLI, atomic replacement."""

import json
import math
from pathlib import Path

import pytest
import torch

from indextts_ray.cli import main as cli_main
from indextts_ray.eval import plots
from indextts_ray.eval.evaluate import EvalOptions, StageResult, evaluate_and_report, stage_names
from indextts_ray.eval.probes import ProbeResult, score_predictions, wilson_interval
from indextts_ray.eval.report import goal_checks
from indextts_ray.model.checkpoint_io import export_checkpoint
from indextts_ray.model.training import TrainingModel
from tests.train.conftest import write_dataset

from .conftest import REPO, tiny_cfg

PNG = b"\x89PNG\r\n\x1a\n"
OPTIONS = EvalOptions(max_items=40, n_prompts=4, device="cpu")


def fake_metrics(stage: int, steps: int = 20) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        m = {"step": s, "mel_loss": 4.2 - 0.05 * s - 0.3 * stage, "text_loss": 5.5 - 0.02 * s,
             "mel_top1": 0.02 * s, "padding": 0.05 + 0.001 * s, "tokens_per_s": 1000.0 + 10 * s,
             "grl_lambda": 1.0, "speaker_weight": 0.0}
        if stage == 2:
            m |= {"speaker_acc": 0.9 - 0.03 * s, "grl_lambda": 1.0 + 0.1 * s, "speaker_weight": 0.1}
        rows.append(m)
        if s % 10 == 0:
            rows.append({"step": s, "val_loss": 4.0 - 0.04 * s - 0.3 * stage, "val_mel_top1": 0.02 * s})
    return rows


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """runs/stage{1,2,3}/{final,metrics.jsonl} (stage 2 with a band in its resolved config) + prepared shards."""
    root = tmp_path_factory.mktemp("evalrun")
    data = write_dataset(root / "prepared", n_train=24, n_val=40)
    cfg = tiny_cfg()
    exports = {}
    for stage in (1, 2, 3):
        torch.manual_seed(stage)
        run = root / "runs" / f"stage{stage}"
        exports[f"stage{stage}"] = export_checkpoint(TrainingModel(cfg, n_speakers=4), run / "final")
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in fake_metrics(stage)))
    (root / "runs" / "stage2" / "config.resolved.yaml").write_text("train:\n  band: {low: 0.25, high: 0.55}\n")
    return root, data, exports


def test_report_renders_every_plot_and_both_formats(tiny_run):
    root, data, exports = tiny_run
    out = root / "report"
    out.mkdir()
    (out / "stale.txt").write_text("from an older report")
    summary = evaluate_and_report(exports, data, out, OPTIONS)

    expected = {"loss_curves.png", "speaker_band.png", "probes.png", "throughput.png",
                *(f"confusion_stage{n}.png" for n in (1, 2, 3)), *(f"clusters_stage{n}.png" for n in (1, 2, 3))}
    assert set(summary["images"]) == expected
    assert {p.name for p in out.iterdir()} == expected | {"report.md", "report.html", "report.json"}  # stale.txt gone
    assert all((out / name).read_bytes().startswith(PNG) for name in expected)
    assert not list(root.glob(".report*"))  # no temp or old copy left behind
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name in expected:
        assert f"]({name})" in md and f'src="{name}"' in page

    stages = summary["stages"]
    assert [s["name"] for s in stages] == ["stage1", "stage2", "stage3"]
    for s in stages:
        assert s["n_rows"] == 40 and s["n_clips"] == 29  # distinct prompts the ingest draws for the 40 targets
        # a fresh tiny model: mel loss near ln(66 codes), text near ln(257 pieces)
        assert abs(s["losses"]["val_loss"] - math.log(66)) < 0.6
        assert abs(s["losses"]["val_text_loss"] - math.log(257)) < 0.8
        for key in ("emotion_from_emovec", "speaker_from_emovec", "speaker_from_latents"):
            p = s["probes"][key]
            assert 0 <= p["accuracy"] <= 1 and 0 < p["chance"] < 1 and p["n_train"] + p["n_test"] <= 40
        assert s["probes"]["speaker_from_latents"]["labels"] == ["spk0", "spk1", "spk2", "spk3"]
        assert set(s["sampling"]) == {"greedy", "top_p"} and s["sampling"]["greedy"]["n"] == 4
    # the tiny dataset's prompt features are speaker means + noise: even an untrained conditioner keeps that
    assert stages[0]["probes"]["speaker_from_latents"]["accuracy"] > 0.9
    assert stages[0]["losses"] != stages[1]["losses"]  # different weights, different numbers
    assert [c["text"].split(":")[0] for c in summary["checks"]] == [
        "speaker probe on the emotion vector falls after Stage 2", "stage1", "stage2", "stage3", "Stage 3 keeps both (±5%)"]
    assert "| stage | val mel loss |" in md and "<th>stage</th>" in page
    assert "Per-emotion accuracy" in md and "Sampling sanity" in md


def test_failed_report_keeps_the_previous_one(tiny_run, monkeypatch):
    root, data, exports = tiny_run
    out = root / "kept"
    out.mkdir()
    (out / "report.md").write_text("previous")

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "plot_throughput", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        evaluate_and_report({"stage1": exports["stage1"]}, data, out, EvalOptions(max_items=12, n_prompts=2,
                                                                                  device="cpu"))
    assert (out / "report.md").read_text() == "previous" and not list(root.glob(".kept*"))


def test_cli_eval_single_export_and_usage_errors(tiny_run, capsys):
    root, data, exports = tiny_run
    out = root / "cli-report"
    rc = cli_main(["eval", "--export", str(exports["stage3"]), "--data", str(data), "--out", str(out),
                   "--max-items", "16", "--prompts", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "report:" in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["stage3"] and summary["stages"][0]["n_rows"] == 16
    assert "speaker_band.png" not in summary["images"]  # stage 3 had no speaker adversary
    assert cli_main(["eval", "--export", str(data), "--data", str(data), "--out", str(out)]) == 2
    assert "not an export directory" in capsys.readouterr().err
    # --probe-splits: every utterance of train+val (24 + 40) is a probe clip
    assert cli_main(["eval", "--export", str(exports["stage3"]), "--data", str(data), "--out", str(out),
                     "--max-items", "16", "--prompts", "1", "--device", "cpu", "--probe-splits", "train,val"]) == 0
    assert json.loads((out / "report.json").read_text())["stages"][0]["n_clips"] == 64
    assert "64 clips for the probes: the utterances of train+val" in (out / "report.md").read_text()
    assert cli_main(["eval", "--export", str(exports["stage3"]), "--data", str(data), "--out", str(out),
                     "--probe-splits", "test"]) == 2
    assert "--probe-splits: a subset of train,val" in capsys.readouterr().err


def test_stage_names_from_export_paths(tmp_path):
    paths = [tmp_path / "runs/stage1/final", tmp_path / "runs/stage2/best", tmp_path / "export",
             tmp_path / "other/export", tmp_path / "runs/stage3/step-00000010"]
    assert stage_names(paths) == ["stage1", "stage2", "export", "export-2", "stage3"]


def test_pipeline_eval_step_writes_the_work_dir_report(tiny_run):
    from indextts_ray.config import load_config
    from indextts_ray.pipeline.steps import build_graph, run_eval

    root, _, _ = tiny_run  # laid out like a pipeline work dir: prepared/, runs/stage{1,2,3}/final
    cfg = load_config(REPO / "configs/pipeline/demo.yaml", [f"pipeline.work_dir={root}", "pipeline.eval.max_items=10"])
    graph = {s.name: s for s in build_graph(cfg)}
    assert graph["eval"].deps == ("export",)
    metrics = run_eval(cfg)
    assert metrics["report"] == str(root / "report" / "report.md")
    assert set(metrics) >= {"stage1/val_loss", "stage2/speaker_from_emovec", "stage3/stop_rate",
                            "stage2/emotion_control_label_accuracy", "stage3/emotion_control_reference_accuracy"}
    report = json.loads((root / "report" / "report.json").read_text())
    assert report["stages"][0]["n_rows"] == 10
    # the demo probes every utterance of train+val (24 + 40), not the prompts of the 10 held-out rows
    assert report["stages"][0]["n_clips"] == 64
    assert report["stages"][0]["probes"]["speaker_from_latents"]["n_test"] == 19  # 30 % of 64
    # emotion control on, small: 3 speakers x 3 texts (9 items per emotion), judges trained on train+val
    control = report["emotion_control"]
    assert control["splits"] == ["train", "val"] and len(control["speakers"]) == 3 and len(control["texts"]) == 3
    off = load_config(REPO / "configs/pipeline/demo.yaml", [f"pipeline.work_dir={root}", "pipeline.eval.enabled=false"])
    assert "eval" not in {s.name for s in build_graph(off)}


def _probe(n_right: int, n: int, labels=("a", "b", "c", "d")) -> ProbeResult:
    """A real score: n test items spread over `labels`, the first n_right predicted right, the rest as labels[0]
    (or labels[1] where that would be right); chance 1/len(labels)."""
    y = [labels[i % len(labels)] for i in range(n)]
    pred = [t if i < n_right else (labels[1] if t == labels[0] else labels[0]) for i, t in enumerate(y)]
    return score_predictions(pred, y, list(labels), 1 / len(labels), n_train=3 * n)


def _stage(name: str, emotion, speaker) -> StageResult:
    probes = {"emotion_from_emovec": emotion, "speaker_from_emovec": speaker, "speaker_from_latents": None}
    return StageResult(name, Path(name), 0, {}, probes, {}, None, [])


def test_goal_verdicts_need_a_test_set_that_tells_the_goal_from_chance():
    # 4 test clips (the old demo): 4/4 = 100 % [50 %, 100 %] cannot tell 85 % from chance 25 % -> not judged
    tiny = goal_checks([_stage("stage1", _probe(4, 4), _probe(3, 4)), _stage("stage2", _probe(4, 4), _probe(1, 4))])
    assert tiny == [
        (None, "speaker probe on the emotion vector falls after Stage 2: 75.0 % [29.4–95.6 %] → 25.0 % [4.4–70.6 %]; "
               "not judged: n too small (4 test clips, 17 needed to tell 75.0 % from 25.0 % at 2 s.e.)"),
        (None, "stage1: emotion probe ≥ 85%: 100.0 % [50.0–100.0 %]; not judged: n too small (4 test clips, 12 "
               "needed to tell 85.0 % from 25.0 % at 2 s.e.)"),
        (None, "stage2: emotion probe ≥ 85%: 100.0 % [50.0–100.0 %]; not judged: n too small (4 test clips, 12 "
               "needed to tell 85.0 % from 25.0 % at 2 s.e.)"),
    ]
    # 40 separable test clips: real verdicts, both ways
    large = goal_checks([_stage("stage1", _probe(38, 40), _probe(30, 40)),
                         _stage("stage2", _probe(28, 40), _probe(11, 40))])
    assert [ok for ok, _ in large] == [True, True, False]  # speaker 75 % -> 27.5 %; emotion 95 %; emotion 70 %
    assert large[1][1] == "stage1: emotion probe ≥ 85%: 95.0 % [83.2–98.6 %]"
    # by hand: q = 4/40, centre = (0.95 + 0.05) / 1.1, half = (2 / 1.1) · sqrt(0.95 · 0.05 / 40 + 0.1 / 160)
    half = 2 / 1.1 * math.sqrt(0.95 * 0.05 / 40 + 0.1 / 160)
    assert wilson_interval(0.95, 40) == pytest.approx((1 / 1.1 - half, 1 / 1.1 + half), abs=1e-12)
    # "keeps within ±5 points" is judged only where 5 points are resolved: not on 40 clips
    keep = goal_checks([_stage("stage2", _probe(38, 40), _probe(11, 40)), _stage("stage3", _probe(38, 40),
                                                                                  _probe(11, 40))])[-1]
    assert keep[0] is None and keep[1].endswith(
        "not judged: n too small (40 test clips, 444 needed to tell 95.0 % from 90.0 % at 2 s.e.)")
