"""The training contract: losses, metrics, GRL, gradient routing, no mutation, overfitting."""

import pytest
import torch

from indextts_ray.model import LossWeights, TrainingModel
from indextts_ray.model.heads import grad_reverse
from indextts_ray.model.training import METRIC_KEYS

from .conftest import make_batch

OFF = LossWeights(text=0.0, mel=0.0, speaker=0.0, emotion=0.0, emotion_table=0.0)


def labelled_batch(cfg, **kw):
    batch = make_batch(cfg, **kw)
    batch["speaker_ids"] = torch.tensor([2, -100])
    batch["emotion_ids"] = torch.tensor([-100, 3])
    return batch


def test_metrics_keys_counts_and_initial_values(tiny_cfg):
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg, n_speakers=4)
    batch = labelled_batch(tiny_cfg)
    out = tm(batch, LossWeights(emotion=1.0, emotion_table=1.0))
    assert set(out) == set(METRIC_KEYS) and all(v.dim() == 0 for v in out.values())
    # text lengths 9, 6 -> 10 + 7 targets; code lengths 14, 10 -> 15 + 11 (real tokens + first stop)
    assert (out["n_text_tokens"].item(), out["n_mel_tokens"].item()) == (17, 26)
    # Fixed-seed values of a fresh model (near uniform: ln 66 = 4.19 codes, ln 257 = 5.55 text, ln 4 = 1.39
    # speakers, ln 7 = 1.95 emotions, plus the spread of the default head init).
    got = {k: out[k].item() for k in ("mel_loss", "text_loss", "speaker_loss", "emotion_loss", "emotion_table_loss")}
    expected = {"mel_loss": 4.43135, "text_loss": 5.83991, "speaker_loss": 1.24637, "emotion_loss": 1.87153,
                "emotion_table_loss": 0.13855}  # fmt: skip
    assert got == pytest.approx(expected, abs=1e-4)
    assert (out["mel_top5"].item(), out["speaker_acc"].item(), out["emotion_acc"].item()) == pytest.approx((3 / 26, 1, 0))
    expected = (0.01 * out["text_loss"] + out["mel_loss"] + 0.1 * out["speaker_loss"] + out["emotion_loss"]
                + out["emotion_table_loss"])  # fmt: skip
    torch.testing.assert_close(out["loss"], expected)


def test_absent_labels_give_zero_without_graph(tiny_cfg):
    tm = TrainingModel(tiny_cfg, n_speakers=4)
    out = tm(make_batch(tiny_cfg), LossWeights(speaker=1.0, emotion=1.0, emotion_table=1.0))
    for k in ("speaker_loss", "speaker_acc", "emotion_loss", "emotion_acc", "emotion_table_loss"):
        assert out[k].item() == 0.0 and out[k].grad_fn is None
    # all-ignored labels: 0, not NaN
    batch = make_batch(tiny_cfg)
    batch["speaker_ids"] = torch.tensor([-100, -100])
    assert tm(batch, LossWeights())["speaker_loss"].item() == 0.0


def test_zero_weight_losses_are_reported_without_graph(tiny_cfg):
    tm = TrainingModel(tiny_cfg, n_speakers=4)
    out = tm(labelled_batch(tiny_cfg), LossWeights(text=0.0, speaker=0.0))
    assert out["text_loss"].item() > 1.0 and out["text_loss"].grad_fn is None
    assert out["speaker_loss"].item() > 0.1 and out["speaker_loss"].grad_fn is None
    out["loss"].backward()
    assert tm.model.text_head.weight.grad is None  # text loss had weight 0
    assert tm.heads.speaker_classifier.net[0].weight.grad is None


def test_caller_tensors_are_not_modified(tiny_cfg):
    tm = TrainingModel(tiny_cfg)
    batch = labelled_batch(tiny_cfg)
    before = {k: v.clone() for k, v in batch.items()}
    tm(batch, LossWeights())
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert batch["text_ids"][1, 6:].ne(tiny_cfg.stop_text_token).all()  # junk padding is still junk


def test_grl_gradient_is_minus_lambda_times_plain(tiny_cfg):
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg, n_speakers=5).eval()  # eval: no dropout, same function both times
    clf = tm.heads.speaker_classifier
    emo = torch.randn(3, tiny_cfg.model_dim)
    labels = torch.tensor([0, 4, 2])

    def grad(reverse: bool, lam: float) -> torch.Tensor:
        x = emo.clone().requires_grad_(True)
        tm.set_grl_lambda(lam)
        logits = tm.heads.speaker_logits(x) if reverse else clf(x)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return x.grad

    plain = grad(False, 0.0)
    assert plain.abs().max() > 1e-4
    for lam in (0.3, 1.0, 2.5):
        torch.testing.assert_close(grad(True, lam), -lam * plain, atol=1e-7, rtol=1e-6)
    x = torch.randn(4, requires_grad=True)
    assert torch.equal(grad_reverse(x, 0.7), x)  # identity forward


def test_speaker_loss_reaches_emotion_encoder_only(tiny_cfg):
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg, n_speakers=4)
    for p in tm.model.conditioning_encoder.parameters():  # Stage 2 freezes the speaker path
        p.requires_grad_(False)
    batch = labelled_batch(tiny_cfg)
    batch["speaker_ids"] = torch.tensor([1, 3])
    tm.set_grl_lambda(1.0)
    tm(batch, LossWeights(text=0.0, mel=1.0, speaker=1.0))["loss"].backward()
    emo_grads = [p.grad for p in tm.model.emo_conditioning_encoder.parameters()]
    assert all(g is not None for g in emo_grads) and sum(g.abs().sum() for g in emo_grads) > 0
    assert all(p.grad is None for p in tm.model.conditioning_encoder.parameters())

    # Speaker loss alone: its gradient is reversed relative to the classifier's own direction and never
    # touches the speaker path, even when that path is trainable.
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg, n_speakers=4)
    tm(batch, LossWeights(text=0.0, mel=0.0, speaker=1.0))["loss"].backward()
    assert tm.model.emo_layer.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tm.model.conditioning_encoder.parameters())
    assert all(p.grad is None for p in tm.model.gpt.parameters())


def test_separate_emotion_prompt_is_used(tiny_cfg):
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg).eval()
    batch = make_batch(tiny_cfg)
    with torch.no_grad():
        same = tm(batch, LossWeights())["mel_loss"]
        explicit = tm({**batch, "emo_feats": batch["spk_feats"], "emo_lengths": batch["spk_lengths"]}, LossWeights())
        other = tm({**batch, "emo_feats": batch["spk_feats"].flip(1), "emo_lengths": batch["spk_lengths"]}, LossWeights())
    assert explicit["mel_loss"].item() == same.item()
    assert abs(other["mel_loss"].item() - same.item()) > 1e-4


def test_emotion_table_learns_the_emotion_vectors(tiny_cfg):
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg)
    batch = make_batch(tiny_cfg)
    batch["emotion_ids"] = torch.tensor([1, 5])
    opt = torch.optim.Adam(tm.heads.emotion_table.parameters(), lr=3e-2)
    first = None
    for _ in range(60):
        out = tm(batch, LossWeights(text=0.0, mel=0.0, emotion_table=1.0))
        first = first if first is not None else out["emotion_table_loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert tm.model.emo_layer.weight.grad is None  # the target is detached
    assert out["emotion_table_loss"].item() < first / 50
    with torch.no_grad():
        emo = tm.model.get_emovec(batch["spk_feats"], batch["spk_lengths"])
        torch.testing.assert_close(tm.heads.emotion_table.emo_vec("happy")[0], emo[0], atol=0.05, rtol=0)


def test_overfit_one_batch(tiny_cfg):
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg)
    batch = make_batch(tiny_cfg)
    opt = torch.optim.AdamW(tm.parameters(), lr=1e-2)
    w = LossWeights(text=0.0)
    losses = []
    for _ in range(30):
        out = tm(batch, w)
        losses.append(out["mel_loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert losses[0] == pytest.approx(4.43135, abs=1e-4)  # same seed as the metrics test
    assert losses[-1] < losses[0] / 50, losses[-1]  # measured: 4.43 -> 0.03
    assert out["mel_top1"].item() == 1.0


def test_stop_loss_is_the_stop_targets_cross_entropy(tiny_cfg):
    """`stop_loss` = mean CE of each sequence's stop target (mel position code_length); weight 0 adds nothing."""
    torch.manual_seed(0)
    tm = TrainingModel(tiny_cfg, n_speakers=4)
    batch = make_batch(tiny_cfg)
    plain = tm(batch, LossWeights())
    assert plain["stop_loss"].grad_fn is None
    torch.testing.assert_close(plain["loss"], 0.01 * plain["text_loss"] + plain["mel_loss"])
    m = tm.model
    conds = m.build_conds(m.get_speaker_latents(batch["spk_feats"], batch["spk_lengths"]),
                          m.get_emovec(batch["spk_feats"], batch["spk_lengths"]))
    _, mel_logits, _, mel_targets = m.compute_logits(conds, batch["text_ids"], batch["text_lengths"], batch["codes"],
                                                     batch["code_lengths"])
    rows = torch.arange(2)
    assert (mel_targets[rows, batch["code_lengths"]] == tiny_cfg.stop_mel_token).all()
    expected = torch.nn.functional.cross_entropy(mel_logits[rows, batch["code_lengths"]], mel_targets[rows, batch["code_lengths"]])
    torch.testing.assert_close(plain["stop_loss"], expected)
    weighted = tm(batch, LossWeights(stop=2.0))
    torch.testing.assert_close(weighted["loss"], plain["loss"] + 2.0 * plain["stop_loss"])
    weighted["loss"].backward()
    assert m.mel_head.weight.grad is not None
