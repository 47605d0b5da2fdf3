"""`prepare` on inputs that cannot give a dataset (issue 20): the error names the cause in one line, every row
is still in `rejected.parquet`, the output folder is not claimed, and the fixed rerun works without --restart.
Shards are written in this process (data.workers=0): no Ray."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indextts_ray.cli import main
from indextts_ray.commands.prepare_cmd import load_prepare_config
from indextts_ray.data.prepare import prepare_dataset
from indextts_ray.data.tokenizer import load_tokenizer
from indextts_ray.errors import DataError
from tests.data.tiny_corpus import tone, write_wav

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs/data/demo.yaml")
FAST = ["data.workers=0", "data.scan_workers=1", "data.features.kmeans_sample_frames=2000"]


def _rows(root: Path, n: int = 8, texts: list[str] | None = None, language: str = "en") -> list[dict]:
    write_wav(root / "w/a.wav", tone(1.5, seed=1))
    write_wav(root / "w/b.wav", tone(1.5, f0=200.0, seed=2))
    emotions = ["neutral", "angry", "happy", "sad"]
    return [{"id": f"u{i:03d}", "audio_path": f"w/{'ab'[i % 2]}.wav", "speaker": f"s{i % 2}", "language": language,
             "text": texts[i] if texts else f"hello number {i}", "duration": 1.5, "emotion": emotions[i % 4]}
            for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _prepare_cli(root: Path, out: Path, manifest: str, *extra: str) -> int:
    return main(["prepare", "--config", DEMO, "--model", "tiny", f"data.root={root}", f"data.manifest={manifest}",
                 f"data.output_dir={out}", *FAST, *extra])


def _latin1(path: Path, rows: list[dict]) -> None:
    path.write_bytes("".join(json.dumps(r | {"text": "café crème"}, ensure_ascii=False) + "\n"
                             for r in rows).encode("latin-1"))


def _parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


# how each broken manifest is written, and what the one-line error must say about it
BROKEN = {
    "empty": (lambda p, rows: p.write_bytes(b""), r"no rows \(the file is empty\)"),
    "blank_lines": (lambda p, rows: p.write_bytes(b"\n  \n\r\n"), r"no rows \(the file is empty\)"),
    "utf16_bom": (lambda p, rows: p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-16"),
                  r"UTF-16.*re-save it as UTF-8"),
    "utf16_no_bom": (lambda p, rows: p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-16-le"),
                     r"UTF-16"),
    "latin1": (_latin1, r"0 of 8 rows accepted: bad_utf8 ×8 \(the file is not UTF-8"),
    "parquet": (_parquet, r"Parquet file, not JSONL"),
    "gzip": (lambda p, rows: p.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows))),
             r"compressed"),
    "binary": (lambda p, rows: p.write_bytes(bytes(range(256)) * 8), r"binary"),
    "json_array": (lambda p, rows: p.write_text(json.dumps(rows, indent=1)), r"rows accepted: not_json ×\d+ \(is the "
                                                                              r"file UTF-8 JSONL"),
    "csv": (lambda p, rows: p.write_text("id,audio_path,text\n" + "".join(f"{r['id']},{r['audio_path']},hi\n"
                                                                         for r in rows)),
            r"0 of 9 rows accepted: not_json ×9 \(is the file UTF-8 JSONL"),
    "audio_elsewhere": (lambda p, rows: _write_jsonl(p, [r | {"audio_path": "../" + r["audio_path"]} for r in rows]),
                        r"0 of 8 rows accepted: path_outside_root ×8 \(paths must stay under data.root"),
    "audio_missing": (lambda p, rows: _write_jsonl(p, [r | {"audio_path": "wavs/" + r["audio_path"]} for r in rows]),
                      r"0 of 8 rows accepted: missing_audio ×8 \(audio paths are relative to the manifest's folder"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_manifest_that_gives_nothing_names_its_cause_and_the_fixed_rerun_works(tmp_path, capsys, kind):
    write, expected = BROKEN[kind]
    rows = _rows(tmp_path)
    write(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    assert _prepare_cli(tmp_path, out, "m.jsonl") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]), errors
    err = errors[0]
    assert "tokenizer" not in err
    rejected = pq.read_table(out / "rejected.parquet")  # written, with every row that was read
    got = re.search(r"0 of (\d+) rows", err)
    assert rejected.num_rows == (int(got.group(1)) if got else 0)
    assert not (out / "plan.json").exists() and not (out / "dataset.json").exists()
    # fixed in place: the same command, no --restart
    _write_jsonl(tmp_path / "m.jsonl", rows)
    assert _prepare_cli(tmp_path, out, "m.jsonl") == 0
    assert json.loads((out / "dataset.json").read_text())["counts"]["rows_in"] == 8


def test_a_directory_is_not_a_manifest(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert _prepare_cli(tmp_path, tmp_path / "out", "data") == 2
    err = capsys.readouterr().err
    assert "is a directory, not a manifest" in err and "not found" not in err


def test_every_failure_before_the_shards_leaves_the_folder_unclaimed(tmp_path):
    """Errors that need the manifest's content (precomputed codes with builtin features, a corpus with more
    characters than the model has text tokens) come before plan.json: the fix (a config change) reruns as is."""
    root, out = tmp_path, tmp_path / "out"
    rows = _rows(root)
    _write_jsonl(root / "codes.jsonl", [r | {"codes_path": "w/a.wav"} for r in rows])
    cfg = load_prepare_config(DEMO, [f"data.root={root}", "data.manifest=codes.jsonl", f"data.output_dir={out}",
                                     *FAST], "tiny")
    with pytest.raises(DataError, match="codes_path"):
        prepare_dataset(cfg)
    assert not (out / "plan.json").exists()
    _write_jsonl(root / "m.jsonl", rows)
    prepare_dataset(load_prepare_config(DEMO, [f"data.root={root}", "data.manifest=m.jsonl", f"data.output_dir={out}",
                                               *FAST], "tiny"))
    assert (out / "dataset.json").is_file()


# ----------------------------------------------------------------------------- a corpus with many characters

HANGUL = [chr(0xAC00 + 19 * i) for i in range(500)]  # 500 distinct syllables


def _korean_texts(n: int) -> list[str]:
    per = -(-len(HANGUL) // n)
    return [" ".join("".join(HANGUL[j: j + 3]) for j in range(i * per, min((i + 1) * per, len(HANGUL)), 3))
            for i in range(n)]


def test_demo_config_takes_a_corpus_with_500_characters(tmp_path):
    """The tiny model has 256 text tokens: the run fails before claiming the folder and names the fix; with
    the fix the tokenizer covers every character and fits the model's text embedding."""
    rows = _rows(tmp_path, n=24, texts=_korean_texts(24), language="ko")
    _write_jsonl(tmp_path / "m.jsonl", rows)
    base = [f"data.root={tmp_path}", "data.manifest=m.jsonl", f"data.output_dir={tmp_path / 'out'}", *FAST]
    with pytest.raises(DataError, match=r"500 distinct characters.*set model.number_text_tokens=(\d+) "
                                        r"data.tokenizer_vocab_size=\1") as e:
        prepare_dataset(load_prepare_config(DEMO, base, "tiny"))
    assert not (tmp_path / "out/plan.json").exists()
    fix = re.search(r"set (model\.number_text_tokens=\d+) (data\.tokenizer_vocab_size=\d+)", str(e.value)).groups()
    cfg = load_prepare_config(DEMO, [*base, *fix], "tiny")
    result = prepare_dataset(cfg)
    assert result.stats["rows_written"]["total"] + result.stats["rows_rejected"] == 24
    tok = load_tokenizer(tmp_path / "out/bpe.model")
    assert tok.vocab_size <= cfg.model.number_text_tokens
    assert all(tok.unknown_chars(t)[1] == 0 for t in _korean_texts(24))  # every character has a piece


def test_the_vocabulary_grows_to_the_corpus_when_the_model_has_room(tmp_path):
    """data.tokenizer_vocab_size below the corpus' characters is raised to them (SentencePiece refused before)."""
    rows = _rows(tmp_path, n=24, texts=_korean_texts(24), language="ko")
    _write_jsonl(tmp_path / "m.jsonl", rows)
    cfg = load_prepare_config(DEMO, [f"data.root={tmp_path}", "data.manifest=m.jsonl",
                                     f"data.output_dir={tmp_path / 'out'}", "model.number_text_tokens=1024",
                                     "data.tokenizer_vocab_size=256", *FAST], "tiny")
    prepare_dataset(cfg)
    assert 504 <= load_tokenizer(tmp_path / "out/bpe.model").vocab_size <= 1024
