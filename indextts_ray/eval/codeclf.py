"""Code-space classifiers: which emotion (or speaker) a sequence of semantic codes carries.

IndexTTS2's GPT emits semantic codes, so whether generation followed the requested emotion can be judged on
the codes themselves, without a vocoder or an audio emotion model. A `CodeClassifier` is small:

    codes (B, T) -> embedding (B, T, E) -> 2 x [Conv1d k=5, GELU] (B, T, H) -> masked mean ‖ max (B, 2H) -> linear

The convolutions see runs of codes (how long a sound lasts: speaking rate), the embedding which codes occur
(spectral shape, loudness).

With `code_vectors` (the builtin extractor's codebook: each code's centroid in feature space,
`builtin.code_vectors`) the embedding starts from what each code *is* (its log-mel bands, log-F0, voicing and
energy, standardised per channel over the codebook) instead of a random vector, so codes of similar pitch or
loudness start close and a judge trained on a few hundred rows need not discover that from co-occurrence; the
embedding stays trainable. `head_layers` adds hidden layers (Linear 2H -> H, GELU, dropout) before the output.
Both are off by default. It is trained with a fixed seed on a stratified split of *real* codes and carries
its own held-out accuracy (`heldout`): a judge that cannot tell the classes apart on real codes says nothing
about generated ones. Training runs under `torch.random.fork_rng`, so it neither depends on nor changes the
caller's global RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from indextts_ray.eval.probes import (
    ProbeResult,
    majority_chance,
    ordered_labels,
    score_predictions,
    stratified_split,
)


class CodeClassifier(nn.Module):
    """(B, T) code ids (padding = `vocab`) + (B, T) mask -> (B, n_classes) logits (module doc)."""

    def __init__(self, vocab: int, n_classes: int, embed_dim: int = 32, hidden: int = 64, dropout: float = 0.1,
                 code_vectors: torch.Tensor | None = None, head_layers: int = 0):
        super().__init__()
        self.vocab = vocab
        if code_vectors is not None:
            embed_dim = int(code_vectors.shape[1])
        self.embedding = nn.Embedding(vocab + 1, embed_dim, padding_idx=vocab)
        if code_vectors is not None:
            with torch.no_grad():
                self.embedding.weight[: len(code_vectors)] = standardised_code_vectors(code_vectors, vocab)
        self.conv1 = nn.Conv1d(embed_dim, hidden, 5, padding=2)
        self.conv2 = nn.Conv1d(hidden, hidden, 5, padding=2)
        head: list[nn.Module] = []
        width = 2 * hidden
        for _ in range(head_layers):
            head += [nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.out = nn.Sequential(*head, nn.Dropout(dropout), nn.Linear(width, n_classes))

    def forward(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(1)  # (B, 1, T)
        h = self.embedding(codes).transpose(1, 2)  # (B, E, T); padding embeds to zeros
        for conv in (self.conv1, self.conv2):
            # zero the padding after each layer, so a sequence's verdict does not depend on its batch's padding
            h = nn.functional.gelu(conv(h)) * m  # (B, H, T)
        h, m = h.transpose(1, 2), m.transpose(1, 2)  # (B, T, H), (B, T, 1)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)
        peak = h.masked_fill(~m, float("-inf")).amax(1)
        peak = torch.where(mask.any(1, keepdim=True), peak, torch.zeros_like(peak))  # an empty sequence: zeros
        return self.out(torch.cat((mean, peak), dim=-1))


def standardised_code_vectors(code_vectors: torch.Tensor, vocab: int) -> torch.Tensor:
    """(K, D) codebook vectors, K <= vocab (the model's extra ids, e.g. start/stop, keep a random embedding) ->
    float32 (K, D) with each channel at mean 0, std 1 over the codebook (a constant channel becomes 0)."""
    v = torch.as_tensor(code_vectors, dtype=torch.float32)
    if v.ndim != 2 or not 1 <= len(v) <= vocab:
        raise ValueError(f"code_vectors must be (K, D) with 1 <= K <= vocab {vocab}, got {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError("code_vectors contain NaN or inf")
    std = v.std(0, unbiased=False)
    return (v - v.mean(0)) / torch.where(std > 1e-8, std, torch.ones_like(std))


def pad_codes(seqs: Sequence[Sequence[int]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) long ids right-padded with `pad_id` (each sequence cut to its first `max_len` codes) and the mask."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=0)))
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:max_len]
        if s:
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, out != pad_id


@dataclass
class TrainedCodeClassifier:
    """A fitted classifier, its class names (index order) and its accuracy on held-out real codes."""

    model: CodeClassifier
    labels: list[str]
    heldout: ProbeResult
    max_len: int
    device: torch.device

    def predict(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        """The predicted class name of each code sequence (an empty one gets the prediction for zeros)."""
        return _predict(self.model, self.labels, seqs, self.max_len, self.device)


@torch.no_grad()
def _predict(model: CodeClassifier, labels: list[str], seqs: Sequence[Sequence[int]], max_len: int,
             device: torch.device, batch_size: int = 128) -> list[str]:
    model.eval()
    out: list[str] = []
    for start in range(0, len(seqs), batch_size):
        x, mask = pad_codes(seqs[start : start + batch_size], model.vocab, max_len)
        out += [labels[i] for i in model(x.to(device), mask.to(device)).argmax(-1).tolist()]
    return out


def train_code_classifier(
    seqs: Sequence[Sequence[int]],
    y: Sequence[str],
    vocab: int,
    seed: int = 0,
    test_fraction: float = 0.3,
    min_per_class: int = 3,
    label_order: Sequence[str] | None = None,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    max_len: int = 500,
    device: torch.device | str = "cpu",
    code_vectors: torch.Tensor | None = None,
    head_layers: int = 0,
) -> TrainedCodeClassifier | None:
    """Fit a `CodeClassifier` on a seeded stratified split of (code sequence, label) pairs and score it on the rest.

    Args:
        seqs: code sequences (ids < `vocab`); y: their labels.
        vocab: code vocabulary size (the model's `number_mel_codes` covers everything generation can emit).
        seed: split, initialisation, dropout and batch order (same seed, same data -> same classifier).
        test_fraction / min_per_class: as in `probes.stratified_split`; None when fewer than two classes remain.
        label_order: order of the result's labels (e.g. the model's emotion list); default sorted.
        epochs, batch_size, lr: AdamW (weight decay 0.01) over the training split.
        max_len: sequences are cut to their first `max_len` codes (bounds time and memory on long utterances).
        code_vectors: (K, D) vectors of codes 0..K-1 (K <= vocab) that initialise the embedding (module doc);
            None = a random embedding of `CodeClassifier`'s default width.
        head_layers: hidden layers before the output layer (module doc).
    """
    split = stratified_split(y, seed, test_fraction, min_per_class)
    if split is None:
        return None
    y = np.asarray([str(v) for v in y], dtype=object)
    bad = next((c for s in seqs for c in s if not 0 <= c < vocab), None)
    if bad is not None:
        raise ValueError(f"code {bad} outside the classifier vocabulary 0..{vocab - 1}")
    labels = ordered_labels(split.kept, label_order)
    target = torch.tensor([labels.index(v) for v in y[split.train]])
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CodeClassifier(vocab, len(labels), code_vectors=code_vectors, head_layers=head_layers).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(split.train), generator=g)
            for start in range(0, len(order), batch_size):
                pick = order[start : start + batch_size]
                x, mask = pad_codes([seqs[split.train[i]] for i in pick.tolist()], vocab, max_len)
                loss = nn.functional.cross_entropy(model(x.to(device), mask.to(device)), target[pick].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    pred = _predict(model, labels, [seqs[i] for i in split.test], max_len, device)
    heldout = score_predictions(pred, y[split.test], labels, majority_chance(y[split.train], y[split.test]),
                                len(split.train), split.dropped_classes)
    return TrainedCodeClassifier(model, labels, heldout, max_len, device)
