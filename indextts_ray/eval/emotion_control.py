"""Emotion-controlled generation and its evaluation on the semantic codes.

    real rows of `splits` --codes--> emotion judge, speaker judge   (CodeClassifier, seeded split, own accuracy)

    N speakers x M held-out texts x each emotion the judge knows, two ways of asking for the emotion:
        label       speaker prompt + EmotionTable(label), blended with the prompt's own vector by alpha
        reference   speaker prompt + the emotion vector of a real clip with that emotion by *another* speaker
                    (zero-shot emotion transfer), blended the same way
    --generate_codes (KV cache, at most max_codes and length_cap x the text's real length, greedy or seeded)-->
    judges --> per-emotion accuracy + confusion (requested vs judged emotion), agreement of the speaker judge
               with the prompt speaker, whether that verdict stays the same across emotions, and (reference)
               how often the reference clip's speaker is heard instead

The judges and the design (speakers, their prompt clips, texts, reference clips) are built once
(`build_setup`) and shared by every checkpoint (`run_emotion_control`), so the stages are judged on the
same items by the same classifiers. A speaker's prompt is its neutral clip when it has one, so the prompt
does not bring an emotion of its own. With greedy decoding and a table whose rows are all equal, the codes
cannot depend on the label: every (speaker, text) gets one verdict for all K emotions, i.e. accuracy 1/K.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from indextts_ray import storage
from indextts_ray.data.ingest import utterance_clips
from indextts_ray.errors import DataError
from indextts_ray.eval.codeclf import TrainedCodeClassifier, train_code_classifier
from indextts_ray.eval.generate import build_conditioning, generate_codes, label_emovec, resolve_emovec
from indextts_ray.eval.heldout import (
    MAX_CLIP_FRAMES,
    UTTERANCE_COLUMNS,
    feats_batch,
    light_rows,
    row_picks,
    sample_rows,
    split_files,
    take_rows,
)
from indextts_ray.eval.probes import ProbeResult, judge, score_predictions
from indextts_ray.eval.sanity import DEFAULT_SETTINGS
from indextts_ray.model.heads import EmotionTable
from indextts_ray.model.unifiedvoice import UnifiedVoice

MODES = ("label", "reference")
MODE_TITLES = {"label": "emotion label (table)", "reference": "reference clip of another speaker"}
NEUTRAL = "neutral"
JUDGE_TARGET = 0.90  # the emotion judge must reach this on real codes before generated accuracy is judged
CONTROL_TARGET = 0.85  # per-emotion accuracy on generated codes


@dataclass(frozen=True)
class EmotionControlOptions:
    """Args: speakers (N) and texts (M) of the design; alpha blends the requested emotion vector with the speaker
    prompt's own (1 = only the requested one, IndexTTS2's `merge_emovec`); max_codes and length_cap bound each
    generation (codes; multiple of the text's real code count); splits = the prepared splits whose real rows
    train the judges and give the clips; max_rows caps those rows (seeded sample); reference adds the
    zero-shot transfer mode; sampling a setting of `sanity.DEFAULT_SETTINGS` (greedy or top_p, seeded);
    epochs of judge training; judge_code_vectors starts both judges' code embeddings from the builtin codebook's
    code vectors (`<data_dir>/features/builtin_codebook.npz`, data prepared with builtin features) and gives
    them one hidden layer (`codeclf` module doc); batch_size items per generation batch."""

    speakers: int = 4
    texts: int = 4
    alpha: float = 1.0
    max_codes: int = 300
    length_cap: float = 3.0
    splits: tuple[str, ...] = ("val",)
    max_rows: int = 4000
    reference: bool = True
    sampling: str = "greedy"
    epochs: int = 30
    judge_code_vectors: bool = False
    batch_size: int = 64

    def __post_init__(self) -> None:
        problems = []
        if self.speakers < 1 or self.texts < 1:
            problems.append(f"speakers and texts must be >= 1, got {self.speakers} and {self.texts}")
        if not 0 <= self.alpha <= 1:
            problems.append(f"alpha must be in [0, 1], got {self.alpha}")
        if self.max_codes < 1 or self.length_cap <= 0:
            problems.append(f"max_codes must be >= 1 and length_cap > 0, got {self.max_codes} and {self.length_cap}")
        if not self.splits or not set(self.splits) <= {"train", "val"}:
            problems.append(f"splits must be a non-empty subset of train, val; got {list(self.splits)}")
        if self.sampling not in DEFAULT_SETTINGS:
            problems.append(f"sampling must be one of {', '.join(DEFAULT_SETTINGS)}; got {self.sampling!r}")
        if self.max_rows < 10 or self.epochs < 1 or self.batch_size < 1:
            problems.append("max_rows must be >= 10, epochs and batch_size >= 1")
        if problems:
            raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------- the shared setup


@dataclass
class Clip:
    """A real utterance used as a conditioning input (a row's speaker prompt), with its known labels."""

    id: str
    speaker: str
    emotion: str
    feats: torch.Tensor  # (T, D) float32


@dataclass
class Text:
    id: str  # the held-out row the text comes from
    text_ids: list[int]
    n_codes: int  # codes of its real recording (bounds generation)


@dataclass
class EmotionControlSetup:
    """Judges and design shared by every checkpoint (module doc)."""

    labels: list[str]  # the emotions asked for: those the emotion judge knows, in the model's order
    emotion_judge: TrainedCodeClassifier
    speaker_judge: TrainedCodeClassifier | None
    speakers: list[str]
    prompts: dict[str, Clip]  # speaker -> its speaker-prompt clip
    texts: list[Text]
    references: dict[tuple[str, str], Clip]  # (speaker, emotion) -> a clip of that emotion by another speaker
    splits: tuple[str, ...]
    n_real_rows: int
    notes: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        """Whether the emotion judge is good enough on real codes for the generated accuracy to be judged: it
        reaches JUDGE_TARGET on a test set large enough to tell JUDGE_TARGET from its chance (`probes.judge`)."""
        return self.judge_verdict()[0] is True

    def judge_verdict(self) -> tuple[bool | None, str]:
        """(reaches JUDGE_TARGET, "") or (None, "not judged: n too small ...") for the emotion judge on real codes."""
        h = self.emotion_judge.heldout
        return judge(h.accuracy >= JUDGE_TARGET, h.n_test, JUDGE_TARGET, h.chance, unit="test rows")

    def to_json(self) -> dict:
        return {
            "labels": self.labels, "splits": list(self.splits), "n_real_rows": self.n_real_rows,
            "emotion_judge": self.emotion_judge.heldout.to_json(),
            "speaker_judge": self.speaker_judge.heldout.to_json() if self.speaker_judge else None,
            "judged": self.judged, "judge_target": JUDGE_TARGET, "control_target": CONTROL_TARGET,
            "speakers": self.speakers, "prompts": {s: c.id for s, c in self.prompts.items()},
            "texts": [t.id for t in self.texts],
            "references": {f"{s}/{e}": f"{c.id} ({c.speaker})" for (s, e), c in self.references.items()},
            "notes": self.notes,
        }  # fmt: skip


def judge_code_vectors(data_dir: str | Path, vocab: int) -> torch.Tensor:
    """The builtin codebook's code vectors of prepared data (`builtin.code_vectors`), checked against the model's
    code vocabulary."""
    from indextts_ray.data.features.builtin import CODEBOOK_FILE, code_vectors

    path = storage.join(data_dir, "features", CODEBOOK_FILE)
    if not storage.is_file(path):
        raise DataError(f"{path}: no builtin codebook; judge_code_vectors needs data prepared with "
                        "data.features.kind=builtin (turn it off for other features)")
    vectors = code_vectors(storage.cached_copy(path))
    if len(vectors) > vocab:
        raise DataError(f"{path}: {len(vectors)} codes > the model's number_mel_codes {vocab}")
    return vectors


def build_setup(data_dir: str | Path, labels: list[str], vocab: int, options: EmotionControlOptions,
                seed: int = 0, test_fraction: float = 0.3, min_per_class: int = 3,
                device: torch.device | str = "cpu") -> EmotionControlSetup:
    """Train the judges on real codes and fix the design (module doc).

    Args:
        data_dir: prepared data (its `options.splits` shards; texts come from `val`).
        labels: the model's emotion labels (`emotion_id` indexes them); vocab: the model's `number_mel_codes`.
        seed, test_fraction, min_per_class: judge splits and training, speaker/text/reference choice.
    """
    data_dir = storage.pathlike(data_dir)
    files = split_files(data_dir, options.splits)
    rows = light_rows(files)
    rng = np.random.default_rng(seed)
    n = len(rows)
    sample = np.arange(n) if n <= options.max_rows else np.sort(rng.choice(n, options.max_rows, replace=False))
    real = take_rows(files, row_picks(rows, sample), ["codes", "speaker", "emotion_id"])
    codes = real.column("codes").to_pylist()
    emo_ids = real.column("emotion_id").to_numpy().astype(np.int64)
    known = np.flatnonzero((emo_ids >= 0) & (emo_ids < len(labels)))
    judge_kw = {"vocab": vocab, "seed": seed, "test_fraction": test_fraction, "min_per_class": min_per_class,
                "epochs": options.epochs, "device": device}
    if options.judge_code_vectors:
        judge_kw |= {"code_vectors": judge_code_vectors(data_dir, vocab), "head_layers": 1}
    emotion_judge = train_code_classifier([codes[i] for i in known], [labels[emo_ids[i]] for i in known],
                                          label_order=labels, **judge_kw)
    where = f"{data_dir} ({'+'.join(options.splits)})"
    if emotion_judge is None:
        raise DataError(f"{where}: fewer than two emotions with {min_per_class}+ labelled rows; the emotion "
                        "control evaluation needs real codes with known emotions (add `emotion` to the manifest)")
    speaker_judge = train_code_classifier(codes, real.column("speaker").to_pylist(), **judge_kw)
    notes = []
    if speaker_judge is None:
        notes.append("fewer than two speakers with enough rows: no speaker judge, speaker agreement not measured")
    asked = list(emotion_judge.labels)
    missing = [e for e in labels if e not in asked]
    if missing:
        notes.append(f"emotions with fewer than {min_per_class} real rows are not asked for: {', '.join(missing)}")

    clips = _clip_rows(rows, data_dir, labels)
    speakers = _choose_speakers(clips, speaker_judge, options.speakers, rng)
    prompts = _choose_prompts(clips, speakers)
    references, missing_refs = _choose_references(clips, speakers, asked, rng) if options.reference else ({}, [])
    if missing_refs:
        notes.append(f"{len(missing_refs)} (speaker, emotion) pairs have no clip of that emotion by another speaker: "
                     + ", ".join(f"{s}/{e}" for s, e in missing_refs[:10]) + (" ..." if len(missing_refs) > 10 else ""))
    chosen = sorted({int(i) for i in [*prompts.values(), *references.values()]})
    feats = _read_clips(files, rows, chosen, clips)
    val = sample_rows(data_dir, options.texts, seed)
    texts = [Text(i, t, int(c)) for i, t, c in zip(val.column("id").to_pylist(), val.column("text_ids").to_pylist(),
                                                   val.column("n_codes").to_pylist())]
    return EmotionControlSetup(
        labels=asked, emotion_judge=emotion_judge, speaker_judge=speaker_judge, speakers=speakers,
        prompts={s: feats[i] for s, i in prompts.items()}, texts=texts,
        references={k: feats[i] for k, i in references.items()}, splits=tuple(options.splits),
        n_real_rows=len(real), notes=notes,
    )


def _clip_rows(rows: pa.Table, data_dir: Path, labels: list[str]) -> dict[str, np.ndarray]:
    """One entry per stored utterance with a known emotion (its own features are the clip), in id order:
    `index` (its row in `rows`), `speaker`, `emotion` (name)."""
    ids = rows.column("id").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids, kind="stable")  # deterministic whatever the shard order
    emotion = rows.column("emotion_id").to_numpy().astype(np.int64)[order]
    keep = (emotion >= 0) & (emotion < len(labels))
    return {"index": order[keep], "emotion": np.array([labels[i] for i in emotion[keep]], dtype=object),
            "speaker": rows.column("speaker").to_numpy(zero_copy_only=False).astype(str)[order][keep]}


def _choose_speakers(clips: dict[str, np.ndarray], judge: TrainedCodeClassifier | None, n: int,
                     rng: np.random.Generator) -> list[str]:
    candidates = sorted(set(clips["speaker"].tolist()) & (set(judge.labels) if judge else set(clips["speaker"])))
    if not candidates:
        raise DataError("no speaker has both a prompt clip with a known emotion and enough rows for the speaker judge")
    if len(candidates) <= n:
        return candidates
    return sorted(rng.choice(candidates, n, replace=False).tolist())


def _choose_prompts(clips: dict[str, np.ndarray], speakers: list[str]) -> dict[str, int]:
    """speaker -> row index of its prompt clip: its first neutral clip (by prompt id), else its first clip."""
    out = {}
    for s in speakers:
        mine = np.flatnonzero(clips["speaker"] == s)
        neutral = mine[clips["emotion"][mine] == NEUTRAL]
        out[s] = int(clips["index"][(neutral if len(neutral) else mine)[0]])
    return out


def _choose_references(clips: dict[str, np.ndarray], speakers: list[str], asked: list[str],
                       rng: np.random.Generator) -> tuple[dict[tuple[str, str], int], list[tuple[str, str]]]:
    """(speaker, emotion) -> row index of a seeded choice among the clips of that emotion by other speakers."""
    refs, missing = {}, []
    for s in speakers:
        for e in asked:
            ok = np.flatnonzero((clips["speaker"] != s) & (clips["emotion"] == e))
            if len(ok):
                refs[(s, e)] = int(clips["index"][rng.choice(ok)])
            else:
                missing.append((s, e))
    return refs, missing


def _read_clips(files: list[Path], rows: pa.Table, chosen: list[int], clips: dict[str, np.ndarray]) -> dict[int, Clip]:
    """The chosen utterances' own features, cut to a prompt's length (only those rows are read)."""
    if not chosen:
        return {}
    table = utterance_clips(take_rows(files, row_picks(rows, np.asarray(chosen)), UTTERANCE_COLUMNS), MAX_CLIP_FRAMES)
    feats, lengths = feats_batch(table)
    emotion = dict(zip(clips["index"].tolist(), clips["emotion"].tolist()))
    return {i: Clip(table.column("prompt_id")[k].as_py(), table.column("speaker")[k].as_py(),
                    emotion[i], feats[k, : int(lengths[k])])
            for k, i in enumerate(chosen)}


# ----------------------------------------------------------------------------- one checkpoint


@dataclass
class ModeResult:
    """Judged generated codes of one mode: `emotion.confusion[i][j]` counts items asked for labels[i] and judged
    labels[j]; `emotion.n_train` is the judge's training size, `emotion.chance` 1/K (every emotion asked equally)."""

    emotion: ProbeResult
    speaker_agreement: float | None  # share of items the speaker judge gives to the prompt speaker
    speaker_agreement_per_emotion: dict[str, float]
    speaker_consistency: float | None  # share of (speaker, text) whose items all get one speaker verdict
    reference_speaker_rate: float | None  # reference mode: share judged as the reference clip's speaker
    n_items: int
    stop_rate: float
    mean_codes: float
    empty: int  # items that stopped before their first code

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "emotion": self.emotion.to_json()}


@dataclass
class EmotionControlResult:
    """One checkpoint's modes (None = not run, with the reason in `notes`); `setup` is shared by all checkpoints."""

    modes: dict[str, ModeResult | None]
    notes: list[str]
    setup: EmotionControlSetup

    def to_json(self) -> dict:
        return {"modes": {k: (v.to_json() if v else None) for k, v in self.modes.items()}, "notes": self.notes}


@dataclass
class Item:
    speaker: str
    text: Text
    emotion: str
    reference: Clip | None = None


def design_items(setup: EmotionControlSetup, mode: str) -> list[Item]:
    """Every (speaker, text, emotion) of the design, in that nesting order; reference mode skips pairs without
    a reference clip."""
    items = []
    for s in setup.speakers:
        for t in setup.texts:
            for e in setup.labels:
                if mode == "label":
                    items.append(Item(s, t, e))
                elif (s, e) in setup.references:
                    items.append(Item(s, t, e, setup.references[(s, e)]))
    return items


def _pad_feats(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([c.size(0) for c in clips])
    out = clips[0].new_zeros(len(clips), int(lengths.max()), clips[0].size(1))
    for i, c in enumerate(clips):
        out[i, : c.size(0)] = c
    return out, lengths


def _request_key(item: Item, table: EmotionTable | None) -> tuple:
    """What an item's generation depends on: speaker prompt, text and the requested emotion vector (for a label,
    the table row's bytes, so labels whose rows are equal share a key)."""
    want = item.reference.id if item.reference is not None else label_emovec(table, [item.emotion]).cpu().numpy().tobytes()
    return item.speaker, item.text.id, want


def _emotion_vectors(model: UnifiedVoice, table: EmotionTable | None, chunk: list[Item], spk: torch.Tensor,
                     spk_len: torch.Tensor, alpha: float) -> torch.Tensor:
    """(B, D) conditioning emotion vectors of a chunk that may mix label and reference items."""
    out = spk.new_zeros(len(chunk), model.cfg.model_dim)
    lab = [i for i, it in enumerate(chunk) if it.reference is None]
    ref = [i for i, it in enumerate(chunk) if it.reference is not None]
    if lab:
        target = label_emovec(table, [chunk[i].emotion for i in lab])
        out[lab] = resolve_emovec(model, spk[lab], spk_len[lab], emo_vec=target, alpha=alpha)
    if ref:
        feats, lengths = _pad_feats([chunk[i].reference.feats for i in ref])
        out[ref] = resolve_emovec(model, spk[ref], spk_len[ref], feats.to(spk.device), lengths.to(spk.device),
                                  alpha=alpha)
    return out


@torch.no_grad()
def generate_items(model: UnifiedVoice, table: EmotionTable | None, setup: EmotionControlSetup, items: list[Item],
                   options: EmotionControlOptions, device: torch.device, seed: int = 0) -> tuple[list[list[int]], list[bool]]:
    """Codes and stop flags of each item: label items take `table`'s vector, reference items their clip's.

    With greedy decoding, items with the same request (`_request_key`) are generated once: equal inputs then give
    equal codes exactly, not codes that differ by the rounding of their row in a batch (argmax near-ties of an
    untrained model flip on that), and it saves time. Sampled items are each drawn on their own.
    """
    sampling = dataclasses.replace(DEFAULT_SETTINGS[options.sampling], max_codes=options.max_codes, seed=seed)
    keys = list(range(len(items))) if sampling.do_sample else [_request_key(it, table) for it in items]
    first: dict = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    todo = [items[i] for i in first.values()]
    was_training = model.training
    model.eval()
    codes: list[list[int]] = []
    stopped: list[bool] = []
    try:
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start : start + options.batch_size]
            spk, spk_len = _pad_feats([setup.prompts[it.speaker].feats for it in chunk])
            spk, spk_len = spk.to(device), spk_len.to(device)
            conds = build_conditioning(model, spk, spk_len, _emotion_vectors(model, table, chunk, spk, spk_len,
                                                                             options.alpha))
            text = [it.text.text_ids for it in chunk]
            text_ids = torch.zeros(len(chunk), max(len(t) for t in text), dtype=torch.long)
            for i, t in enumerate(text):
                text_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            limits = torch.tensor([max(1, math.ceil(options.length_cap * it.text.n_codes)) for it in chunk])
            gen = generate_codes(model, conds, text_ids.to(device), torch.tensor([len(t) for t in text], device=device),
                                 sampling, item_limits=limits)
            codes += gen.as_lists()
            stopped += gen.stopped.tolist()
    finally:
        model.train(was_training)
    done = dict(zip(first, zip(codes, stopped)))
    return [done[k][0] for k in keys], [done[k][1] for k in keys]


def judge_items(setup: EmotionControlSetup, items: list[Item], codes: list[list[int]], stopped: list[bool]) -> ModeResult:
    """Score generated codes with the judges (module doc)."""
    asked = [it.emotion for it in items]
    emotion = score_predictions(setup.emotion_judge.predict(codes), asked, setup.labels, 1 / len(setup.labels),
                                setup.emotion_judge.heldout.n_train)
    agreement = per_emotion = consistency = ref_rate = None
    if setup.speaker_judge is not None:
        heard = np.asarray(setup.speaker_judge.predict(codes), dtype=object)
        same = heard == np.asarray([it.speaker for it in items], dtype=object)
        agreement = float(same.mean())
        per_emotion = {e: float(same[np.asarray(asked) == e].mean()) for e in setup.labels if e in asked}
        groups: dict[tuple[str, str], set[str]] = {}
        for it, h in zip(items, heard):
            groups.setdefault((it.speaker, it.text.id), set()).add(h)
        consistency = float(np.mean([len(v) == 1 for v in groups.values()]))
        if items[0].reference is not None:
            ref_rate = float(np.mean(heard == np.asarray([it.reference.speaker for it in items], dtype=object)))
    lengths = [len(c) for c in codes]
    return ModeResult(emotion, agreement, per_emotion or {}, consistency, ref_rate, len(items),
                      float(np.mean(stopped)), float(np.mean(lengths)), int(sum(n == 0 for n in lengths)))


def run_emotion_control(model: UnifiedVoice, table: EmotionTable | None, setup: EmotionControlSetup,
                        options: EmotionControlOptions, device: torch.device, seed: int = 0) -> EmotionControlResult:
    """Generate and judge every mode for one checkpoint (`table` None: an export without the label table)."""
    asked: dict[str, list[Item]] = {}
    notes = []
    for mode in MODES:
        if mode == "reference" and not options.reference:
            continue
        asked[mode] = design_items(setup, mode)
        if mode == "label" and table is None:
            asked[mode] = []
            notes.append("label: the export has no emotion_table.safetensors (not a TrainingModel export)")
        elif not asked[mode]:
            notes.append(f"{mode}: no items (no reference clips by other speakers)")
    # both modes in the same batches: one decoding loop instead of two
    codes, stopped = generate_items(model, table, setup, [it for v in asked.values() for it in v], options, device, seed)
    modes: dict[str, ModeResult | None] = {}
    start = 0
    for mode, items in asked.items():
        end = start + len(items)
        modes[mode] = judge_items(setup, items, codes[start:end], stopped[start:end]) if items else None
        start = end
    return EmotionControlResult(modes, notes, setup)


def control_summary(result: EmotionControlResult) -> str:
    """One log line: accuracy per mode with the speaker agreement."""
    parts = []
    for mode, r in result.modes.items():
        if r is None:
            parts.append(f"{mode} n/a")
        else:
            spk = "n/a" if r.speaker_agreement is None else f"{r.speaker_agreement:.2f}"
            parts.append(f"{mode} emotion {r.emotion.accuracy:.2f} (chance {r.emotion.chance:.2f}) speaker {spk}")
    return " | ".join(parts)
