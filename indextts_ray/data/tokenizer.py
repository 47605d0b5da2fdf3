"""SentencePiece BPE text tokenizer: load, train, extend with a new language, measure unknown characters.

Id convention (official IndexTTS `TextTokenizer`): `<s>` = 0 and `</s>` = 1 are the GPT's start/stop text
tokens, `<unk>` is whatever the model says (2 for models trained here). `encode` adds neither start nor stop.

`extend_tokenizer` appends pieces to an existing model's `ModelProto` and never touches existing entries, so
every old piece keeps its id. It only appends pieces that contain at least one character the base model does
not know: a merge made of known characters could change how old-language text is split, one with a new
character cannot, so old-language encodings stay identical.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from sentencepiece import sentencepiece_pb2 as sp_text_pb2

from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write_bytes, sha256_file

BOS, EOS = "<s>", "</s>"
_Type = sp_pb2.ModelProto.SentencePiece.Type


class Tokenizer:
    """A loaded bpe.model: `encode(text) -> ids` (no start/stop), `vocab_size`, `unk_id`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"tokenizer not found: {self.path} (train one with `indextts-ray tokenizer train`)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except Exception as e:
            raise DataError(f"{self.path}: not a SentencePiece model ({e})") from None
        if self.sp.piece_to_id(BOS) != 0 or self.sp.piece_to_id(EOS) != 1:
            raise DataError(f"{self.path}: expected <s> = 0 and </s> = 1 (the GPT's start/stop text tokens), "
                            f"got {self.sp.piece_to_id(BOS)} and {self.sp.piece_to_id(EOS)}")
        self.vocab_size = self.sp.get_piece_size()
        self.unk_id = self.sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` of every text, on `num_threads` native threads (default: one per CPU); same ids."""
        return self.sp.encode(texts, num_threads=num_threads or os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def unknown_chars(self, text: str) -> tuple[int, int, Counter]:
        """(characters, characters mapped to <unk>, Counter of those characters); whitespace not counted."""
        unknown: Counter = Counter()
        spt = sp_text_pb2.SentencePieceText.FromString(self.sp.encode(text, out_type="serialized_proto"))
        for piece in spt.pieces:
            if piece.id == self.unk_id:
                unknown.update(ch for ch in piece.surface if not ch.isspace())
        total = sum(1 for ch in text if not ch.isspace())
        return total, sum(unknown.values()), unknown

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a SentencePiece model and check the `<s>`=0 / `</s>`=1 convention."""
    return Tokenizer(path)


def min_vocab_size(texts: Iterable[str]) -> int:
    """The smallest vocabulary a BPE with full character coverage can have on `texts`: each distinct character,
    the word-boundary piece ▁ (which stands for the space) and <s>, </s>, <unk>."""
    chars = set("".join(texts))
    chars.discard(" ")
    chars.add("\u2581")
    return len(chars) + 3


def train_tokenizer(texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int,
                    character_coverage: float = 0.9995) -> Path:
    """Train a BPE model on `texts` (already normalised) and write `<out_prefix>.model`; returns its path.

    The vocabulary may come out smaller than `vocab_size` on a small corpus (no hard limit).
    """
    out = Path(f"{out_prefix}.model")
    buf = io.BytesIO()
    sentences = [t for t in texts if t.strip()]
    if not sentences:
        raise DataError("no text to train a tokenizer on (every row empty or rejected)")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
            character_coverage=character_coverage, hard_vocab_limit=False,
            bos_id=0, eos_id=1, unk_id=2, pad_id=-1, bos_piece=BOS, eos_piece=EOS, unk_piece="<unk>",
            # text is already in spoken form from indextts_ray.text.normalize: no second normalisation
            normalization_rule_name="identity",
            # one thread and no sampling: the same texts give the same model, byte for byte
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
        )
    except RuntimeError as e:  # e.g. more distinct characters than vocab_size
        raise DataError(f"SentencePiece training for {out} failed: {str(e).splitlines()[0]} "
                        "(raise the vocabulary size or lower the character coverage)") from None
    atomic_write_bytes(out, buf.getvalue())
    return out


@dataclass
class ExtendReport:
    base_vocab: int
    new_vocab: int
    added: int
    skipped_known: int  # candidate pieces made only of characters the base already knows
    coverage_before: dict[str, dict] = field(default_factory=dict)
    coverage_after: dict[str, dict] = field(default_factory=dict)


def extend_tokenizer(base_path: str | os.PathLike, texts: Iterable[str], out_path: str | os.PathLike,
                     new_pieces: int, coverage_texts: Mapping[str, list[str]] | None = None,
                     character_coverage: float = 1.0) -> ExtendReport:
    """Append up to `new_pieces` BPE pieces learnt from `texts` to the model at `base_path`, writing `out_path`.

    New characters come first, then merges in the learnt model's priority order. Every existing piece keeps
    its id, score and type. `coverage_texts` (language -> texts) is measured
    before and after: characters mapped to `<unk>`.
    """
    base = sp_pb2.ModelProto()
    base.ParseFromString(Path(base_path).read_bytes())
    if base.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise DataError(f"{base_path}: only BPE models can be extended (this one is "
                        f"{sp_pb2.TrainerSpec.ModelType.Name(base.trainer_spec.model_type)})")
    before = load_tokenizer(base_path)
    texts = [t for t in texts if t.strip()]
    n_chars = len({ch for t in texts for ch in t if not ch.isspace()})
    with tempfile.TemporaryDirectory() as tmp:
        # SentencePiece needs room for every character; + 3 for <s>, </s>, <unk> (never appended)
        learnt = load_tokenizer(train_tokenizer(texts, Path(tmp) / "new", new_pieces + n_chars + 3,
                                                character_coverage))
        new = sp_pb2.ModelProto()
        new.ParseFromString(learnt.path.read_bytes())

    existing = {p.piece for p in base.pieces}
    known_chars = {p.piece for p in base.pieces if len(p.piece) == 1 and p.type == _Type.NORMAL}
    min_score = min((p.score for p in base.pieces if p.type == _Type.NORMAL), default=0.0)
    normal = [p for p in new.pieces if p.type == _Type.NORMAL and p.piece not in existing]
    # new characters first (without them a language stays <unk>), then merges in the new model's priority
    candidates = [p for p in normal if len(p.piece) == 1] + [p for p in normal if len(p.piece) > 1]
    added = skipped = 0
    for p in candidates:
        if added == new_pieces:
            break
        if all(ch in known_chars for ch in p.piece):
            skipped += 1
            continue
        # below every base score: base merges always win, new ones apply only where new characters are
        base.pieces.add(piece=p.piece, score=min_score - 1.0 + p.score, type=_Type.NORMAL)
        added += 1
    base.trainer_spec.vocab_size = len(base.pieces)
    atomic_write_bytes(out_path, base.SerializeToString())

    after = load_tokenizer(out_path)
    coverage_texts = coverage_texts or {"all": texts}
    return ExtendReport(
        base_vocab=before.vocab_size, new_vocab=after.vocab_size, added=added, skipped_known=skipped,
        coverage_before={lang: unknown_coverage(before, ts) for lang, ts in coverage_texts.items()},
        coverage_after={lang: unknown_coverage(after, ts) for lang, ts in coverage_texts.items()},
    )


def manifest_texts(manifest: str | os.PathLike, fmt: str, text_cfg) -> tuple[dict[str, list[str]], int]:
    """A manifest's texts normalised as `prepare` does (`text_cfg`: a TextConfig), grouped by language, and the
    number of rows without a usable text (reported by callers, not used)."""
    from indextts_ray.data.manifest import iter_manifest
    from indextts_ray.text import normalize_with_config

    by_lang: dict[str, list[str]] = defaultdict(list)
    skipped = 0
    for row in iter_manifest(Path(manifest), fmt):
        f = row.fields or {}
        text, lang = f.get("text"), f.get("language")
        if not isinstance(text, str) or not text.strip() or not (lang is None or isinstance(lang, str)):
            skipped += 1
            continue
        norm = normalize_with_config(text, lang, text_cfg)
        by_lang[norm.language].append(norm.text)
    if not by_lang:
        raise DataError(f"{manifest}: no row with a usable text field")
    return dict(by_lang), skipped


def unknown_coverage(tok: Tokenizer, texts: Iterable[str], top: int = 10) -> dict:
    """Characters, unknown characters, coverage (1 - unknown/characters) and the most common unknowns."""
    chars = unk = 0
    counts: Counter = Counter()
    for t in texts:
        c, u, cnt = tok.unknown_chars(t)
        chars, unk = chars + c, unk + u
        counts.update(cnt)
    return {
        "chars": chars, "unknown": unk, "coverage": 1.0 - unk / chars if chars else 1.0,
        "top_unknown": "".join(ch for ch, _ in counts.most_common(top)),
    }
