"""Stage 2's adversary end to end through `TrainingModel.forward`: the speaker loss, through the GRL, trains the
emotion encoder against the speaker classifier. Fails when the GRL is removed or its sign flipped."""

import torch

from indextts_ray.model.training import LossWeights, TrainingModel
from tests.model.conftest import make_batch

SPEAKER_ONLY = LossWeights(text=0.0, mel=0.0, speaker=1.0, emotion=0.0, emotion_table=0.0)
LR = 0.5  # large enough for a clear change on the tiny model (measured: classifier -0.0035, encoder +0.044)


def _setup(cfg):
    torch.manual_seed(0)
    tm = TrainingModel(cfg, n_speakers=4).eval()  # eval: no dropout, so the loss is one function of the weights
    batch = make_batch(cfg, b=4)
    batch["speaker_ids"] = torch.tensor([0, 1, 2, 3])
    return tm, batch


def _speaker_loss(tm, batch) -> float:
    with torch.no_grad():
        return float(tm(batch, SPEAKER_ONLY)["speaker_loss"])


def _sgd_step(tm, batch, params: dict[str, torch.nn.Parameter]) -> None:
    """One plain SGD step of `params` on the speaker loss (the other parameters stay as they are)."""
    tm.zero_grad(set_to_none=True)
    tm(batch, SPEAKER_ONLY)["loss"].backward()
    with torch.no_grad():
        for p in params.values():
            p -= LR * p.grad


def _encoder_step_change(tm, batch, lam: float) -> float:
    """Speaker-loss change made by one step of the emotion encoder alone, the GRL at strength `lam`."""
    start = {k: v.clone() for k, v in tm.state_dict().items()}
    tm.set_grl_lambda(lam)
    before = _speaker_loss(tm, batch)
    tm.zero_grad(set_to_none=True)
    tm(batch, SPEAKER_ONLY)["loss"].backward()
    # with the text and mel losses off, the only UnifiedVoice weights with a gradient are the emotion encoder's
    encoder = {n: p for n, p in tm.model.named_parameters() if p.grad is not None}
    assert encoder and all(n.startswith(("emo_conditioning_encoder.", "emo_perceiver_encoder.", "emovec_layer.",
                                         "emo_layer.")) for n in encoder), sorted(encoder)
    _sgd_step(tm, batch, encoder)
    change = _speaker_loss(tm, batch) - before
    tm.load_state_dict(start)
    return change


def test_speaker_loss_through_the_grl_moves_the_emotion_encoder_against_the_classifier(tiny_cfg):
    tm, batch = _setup(tiny_cfg)
    before = _speaker_loss(tm, batch)

    # the classifier's own step lowers its loss on the emotion vectors ...
    tm.set_grl_lambda(1.0)
    _sgd_step(tm, batch, dict(tm.heads.speaker_classifier.named_parameters()))
    classifier_change = _speaker_loss(tm, batch) - before
    assert classifier_change < -1e-3, classifier_change

    # ... the emotion encoder's step, through the reversed gradient, raises it
    tm, batch = _setup(tiny_cfg)
    up = _encoder_step_change(tm, batch, 1.0)
    assert up > 1e-3, up
    # the same step without reversal (GRL removed or its sign flipped) would lower it: what the test tells apart
    assert _encoder_step_change(tm, batch, -1.0) < -1e-3
    assert _encoder_step_change(tm, batch, 0.0) == 0.0  # λ 0: no gradient reaches the encoder
