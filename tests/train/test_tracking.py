"""Rank-0 tracking: metrics.jsonl, and TensorBoard under the seed recipe's tags plus guard and mixture scalars."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from indextts_ray.train.config import LoggingSettings
from indextts_ray.train.tracking import Tracker, read_metrics


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
