"""SentencePiece BPE: the <s>/</s> convention, deterministic training, extension that keeps every old id."""

from __future__ import annotations

import json
import random

import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from indextts_ray.cli import main
from indextts_ray.data.tokenizer import extend_tokenizer, load_tokenizer, train_tokenizer
from indextts_ray.errors import DataError

WORDS = ["hello", "world", "speech", "synthesis", "train", "model", "data", "voice", "quiet", "river"]
KO = ["안녕하세요 저는 음성 합성 모델입니다", "오늘 날씨가 좋네요 산책 갑시다", "데이터 준비를 시작합니다",
      "사과 세 개를 샀어요", "열 시 삼십 분에 만나요"]


def _english(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(n)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_tokenizer(_english(), tmp_path_factory.mktemp("tok") / "en", vocab_size=80, character_coverage=1.0)


def test_trained_model_follows_the_official_id_convention(base):
    tok = load_tokenizer(base)
    assert (tok.sp.id_to_piece(0), tok.sp.id_to_piece(1), tok.unk_id) == ("<s>", "</s>", 2)
    ids = tok.encode("hello world")
    assert ids and 0 not in ids and 1 not in ids  # no start/stop added
    assert tok.decode(ids) == "hello world"
    assert tok.vocab_size == 80


def test_training_is_deterministic(base, tmp_path):
    again = train_tokenizer(_english(), tmp_path / "en", vocab_size=80, character_coverage=1.0)
    assert again.read_bytes() == base.read_bytes()


def test_wrong_convention_and_non_models_are_refused(tmp_path):
    p = train_tokenizer(_english(50), tmp_path / "x", 40, 1.0)
    proto = sp_pb2.ModelProto.FromString(p.read_bytes())
    proto.pieces[0].piece, proto.pieces[1].piece = proto.pieces[1].piece, proto.pieces[0].piece
    (tmp_path / "swapped.model").write_bytes(proto.SerializeToString())
    with pytest.raises(DataError, match="<s> = 0"):
        load_tokenizer(tmp_path / "swapped.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    with pytest.raises(DataError, match="tokenizer train"):
        load_tokenizer(tmp_path / "missing.model")


def test_extension_keeps_every_old_piece_id_and_encoding(base, tmp_path):
    old = load_tokenizer(base)
    english = _english(50, seed=1)
    report = extend_tokenizer(base, KO * 20, tmp_path / "enko.model", new_pieces=80,
                              coverage_texts={"en": english, "ko": KO})
    new = load_tokenizer(tmp_path / "enko.model")
    old_proto = sp_pb2.ModelProto.FromString(base.read_bytes())
    new_proto = sp_pb2.ModelProto.FromString((tmp_path / "enko.model").read_bytes())
    assert list(new_proto.pieces)[: len(old_proto.pieces)] == list(old_proto.pieces)  # piece, score, type
    assert new.vocab_size == old.vocab_size + report.added and 0 < report.added <= 80
    assert [new.encode(t) for t in english] == [old.encode(t) for t in english]
    # Korean was all <unk> before, and is covered after
    assert report.coverage_before["ko"]["coverage"] == 0.0 and report.coverage_after["ko"]["coverage"] == 1.0
    assert report.coverage_before["en"]["coverage"] == report.coverage_after["en"]["coverage"] == 1.0
    assert old.unk_id in old.encode(KO[0]) and new.unk_id not in new.encode(KO[0])
    assert all(i >= old.vocab_size or new.sp.id_to_piece(i) == "▁" for i in new.encode("안녕하세요"))
    assert new.decode(new.encode(KO[0])) == KO[0]


def test_extension_skips_pieces_of_known_characters(base, tmp_path):
    # mixed text: pieces made only of Latin letters could re-split English, so they are not added
    report = extend_tokenizer(base, ["hello 안녕 world 하세요 quietriver"] * 30, tmp_path / "m.model", new_pieces=30)
    assert report.skipped_known > 0
    new = sp_pb2.ModelProto.FromString((tmp_path / "m.model").read_bytes())
    added = [p.piece for p in new.pieces][load_tokenizer(base).vocab_size:]
    assert added and all(any("\uac00" <= ch <= "\ud7a3" for ch in piece) for piece in added)


def test_tokenizer_cli_train_and_extend(tmp_path, capsys):
    en = tmp_path / "en.jsonl"
    en.write_text("".join(json.dumps({"id": str(i), "text": t, "language": "en"}) + "\n"
                          for i, t in enumerate(_english(100))))
    assert main(["tokenizer", "train", str(en), "--vocab-size", "60", "--out", str(tmp_path / "bpe.model")]) == 0
    assert "60 pieces from 100 texts" in capsys.readouterr().out
    mixed = tmp_path / "mixed.list"
    mixed.write_text("".join(f"w{i}.wav|s|ko|{t}\n" for i, t in enumerate(KO * 4))
                     + "".join(f"e{i}.wav|s|en|{t}\n" for i, t in enumerate(_english(5))) + "broken line\n")
    assert main(["tokenizer", "extend", str(tmp_path / "bpe.model"), str(mixed), "--language", "ko",
                 "--pieces", "80", "--out", str(tmp_path / "bpe_ko.model")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 rows" in out
    ko_line = next(line for line in out.splitlines() if line.startswith("ko "))
    assert "100.00%" in ko_line and ko_line.split()[-1] == "0.00%"  # all unknown before, none after
    assert main(["tokenizer", "extend", str(tmp_path / "bpe.model"), str(mixed), "--language", "ja",
                 "--pieces", "5", "--out", str(tmp_path / "x.model")]) == 2


def test_extension_respects_the_piece_budget(base, tmp_path):
    report = extend_tokenizer(base, KO * 20, tmp_path / "small.model", new_pieces=10,
                              coverage_texts={"ko": KO})
    assert report.added == 10 and report.new_vocab == load_tokenizer(base).vocab_size + 10
    assert 0.0 < report.coverage_after["ko"]["coverage"] < 1.0  # characters first, but not all fit


def test_too_small_vocabulary_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="raise the vocabulary size"):
        train_tokenizer(KO, tmp_path / "tiny", vocab_size=10, character_coverage=1.0)
