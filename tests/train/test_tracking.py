"""Rank-0 tracking: metrics.jsonl, and TensorBoard under the seed recipe's tags plus guard and mixture scalars."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from indextts_ray.train.config import LoggingSettings
from indextts_ray.train.tracking import Tracker, format_line, read_metrics


def test_tensorboard_tags_and_jsonl(tmp_path):
    tracker = Tracker(0, tmp_path, "t", {}, LoggingSettings(wandb=False))
    for step in (1, 2):
        tracker.log({"step": step, "mel_loss": 3.0 / step, "speaker_weight": 0.1, "skipped_steps": step - 1,
                     "guard_reloads": 0, "mix/emo/loss": 2.5, "mix/emo/epoch_samples": 4 * step,
                     "mfu": None, "unlisted": 7}, step, line=False)
    tracker.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/mel_loss", "train/speaker_weight", "guard/skipped_steps",
                                          "guard/reloads", "mix/emo/loss", "mix/emo/epoch_samples"}
    assert [e.value for e in acc.Scalars("guard/skipped_steps")] == [0.0, 1.0]
    m = read_metrics(tmp_path)
    assert m[2]["mel_loss"] == 1.5 and m[2]["unlisted"] == 7 and "mfu" not in m[2]


def test_other_ranks_write_nothing(tmp_path):
    tracker = Tracker(1, tmp_path, "t", {}, LoggingSettings(wandb=False))
    tracker.log({"step": 1, "mel_loss": 1.0}, 1)
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_wandb_ids_are_unique_per_run_dir_and_config_and_grouped_by_pipeline(tmp_path, monkeypatch):
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or None)
    settings = LoggingSettings(wandb=True, wandb_mode="offline", tensorboard=False)
    for work, stage, cfg in (("expA", 1, {"lr": 1}), ("expB", 1, {"lr": 1}), ("expA", 2, {"lr": 1}),
                             ("expA", 1, {"lr": 1}), ("expA", 1, {"lr": 2})):
        run_dir = tmp_path / work / "runs" / f"stage{stage}"
        run_dir.mkdir(parents=True, exist_ok=True)
        Tracker(0, run_dir, f"stage{stage}", {"train": {"stage": stage, **cfg}}, settings).close()
    a1, b1, a2, a1_again, a1_other = calls
    assert a1["id"] != b1["id"] and a1["id"].startswith("stage1-")  # two experiments never merge
    assert a1_again["id"] == a1["id"]  # a resumed run continues its wandb run
    assert a1_other["id"] != a1["id"]  # another config in the same run dir is another run
    assert a1["group"] == a2["group"] != b1["group"] and a1["group"].startswith("expA-")
    assert (a1["job_type"], a2["job_type"]) == ("stage1", "stage2")


def test_console_line_has_step_total_and_eta(tmp_path, caplog):
    tracker = Tracker(0, tmp_path, "t", {"train": {"max_steps": 100}}, LoggingSettings(wandb=False, tensorboard=False))
    assert tracker.eta(10, 100, now=0.0) is None  # first logged step: no rate yet
    assert tracker.eta(20, 100, now=5.0) == 40.0  # 10 steps in 5 s, 80 left
    m = {"step": 20, "loss": 1.0, "text_loss": 0.1, "mel_loss": 0.9, "mel_top1": 0.5, "lr": 1e-3, "grad_norm": 1.0,
         "tokens_per_s": 10.0, "padding": 0.1, "data_wait": 0.0, "step_ms": 12.0}
    assert format_line(m, 100, 40.0).startswith("step 20/100 eta 0m40s | loss 1.000")
    assert format_line(m).startswith("step 20 | loss")
    with caplog.at_level("INFO", logger="indextts_ray.train"):
        tracker.log(m, 20)
    tracker.close()
    assert "step 20/100" in caplog.text
