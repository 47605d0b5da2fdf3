"""The optional tokenizer step: trains a BPE or extends a base model before prepare, and prepare uses it."""

import json
import random

import pytest

from indextts_ray.config import load_config
from indextts_ray.data.tokenizer import load_tokenizer, manifest_texts, min_vocab_size, train_tokenizer
from indextts_ray.errors import ConfigError
from indextts_ray.pipeline.runner import run_pipeline
from indextts_ray.pipeline.steps import build_graph, data_config, layout, run_tokenizer
from tests.pipeline.test_pipeline import REPO

WORDS = ["hello", "world", "speech", "synthesis", "train", "model", "data", "voice", "quiet", "river"]


def _cfg(work, *extra):
    return load_config(REPO / "configs/pipeline/demo.yaml", [
        f"pipeline.work_dir={work}", "pipeline.synth.speakers=2", "pipeline.synth.utts_per_speaker=6",
        "pipeline.tokenizer.enabled=true", *extra])


@pytest.fixture(scope="module")
def english_base(tmp_path_factory):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(200)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("base") / "en", vocab_size=80, character_coverage=1.0)


def test_step_sits_between_corpus_and_prepare(tmp_path):
    cfg = _cfg(tmp_path)
    deps = {s.name: s.deps for s in build_graph(cfg)}
    assert deps["tokenizer"] == ("synth",) and deps["prepare"] == ("synth", "tokenizer")
    assert data_config(cfg).data.tokenizer == str(layout(cfg).tokenizer)
    assert "tokenizer" not in {s.name for s in build_graph(_cfg(tmp_path, "pipeline.tokenizer.enabled=false"))}
    with pytest.raises(ConfigError, match="leave data.tokenizer unset"):
        data_config(_cfg(tmp_path, "data.tokenizer=/x/bpe.model"))


def test_extends_a_base_model_keeping_its_ids(tmp_path, english_base):
    cfg = _cfg(tmp_path, f"pipeline.tokenizer.base={english_base}", "pipeline.tokenizer.language=ko",
               "pipeline.tokenizer.pieces=1000")
    assert run_pipeline(cfg, until="tokenizer") == ["synth", "tokenizer"]
    base, ext = load_tokenizer(english_base), load_tokenizer(layout(cfg).tokenizer)
    assert base.vocab_size < ext.vocab_size <= base.vocab_size + 1000
    sp_base, sp_ext = base.sp, ext.sp
    assert [sp_ext.id_to_piece(i) for i in range(base.vocab_size)] == [sp_base.id_to_piece(i) for i in range(base.vocab_size)]
    receipt = json.loads((tmp_path / "receipts" / "tokenizer.json").read_text())
    assert receipt["metrics"]["added"] == ext.vocab_size - base.vocab_size
    assert receipt["metrics"]["unknown_after/ko"] == 0.0  # every Korean character was <unk> in the English base
    assert run_pipeline(cfg, until="tokenizer") == []  # receipt matches: nothing reruns


def test_extension_beyond_the_model_vocabulary_says_what_to_set(tmp_path, english_base):
    cfg = _cfg(tmp_path, f"pipeline.tokenizer.base={english_base}", "pipeline.tokenizer.pieces=1000")
    run_pipeline(cfg, until="synth")
    small = cfg.model_copy(update={"model": cfg.model.model_copy(update={"number_text_tokens": 100})})
    with pytest.raises(ConfigError, match=r"set model.number_text_tokens=\d+ or more"):
        run_tokenizer(small)


def test_trains_one_when_there_is_no_base(tmp_path):
    cfg = _cfg(tmp_path, "data.tokenizer_vocab_size=128")
    run_pipeline(cfg, until="tokenizer")
    assert load_tokenizer(layout(cfg).tokenizer).vocab_size == 128


def test_a_vocabulary_below_the_corpus_characters_grows_to_cover_them(tmp_path):
    """ko+en synthetic text has more distinct characters than 24 pieces: the step trains the smallest
    vocabulary that holds them all (as prepare does), or names the model setting that is too small."""
    cfg = _cfg(tmp_path, "data.tokenizer_vocab_size=24", "pipeline.synth.languages=[ko,en]")
    run_pipeline(cfg, until="synth")
    data = data_config(cfg).data
    by_lang, _ = manifest_texts(data.manifest, data.format, data.text)
    need = min_vocab_size([x for xs in by_lang.values() for x in xs])
    assert need > 24
    small = cfg.model_copy(update={"model": cfg.model.model_copy(update={"number_text_tokens": need - 1})})
    with pytest.raises(ConfigError, match=rf"at least {need} pieces .* set model.number_text_tokens={need} or more"):
        run_tokenizer(small)
    run_pipeline(cfg, until="tokenizer")
    assert load_tokenizer(layout(cfg).tokenizer).vocab_size >= need
