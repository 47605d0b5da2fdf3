"""Speaker mapping: exact numbers on a generated long-tailed corpus, from a manifest and from shards."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indextts_ray.cli import main
from indextts_ray.data.speakers import build_speaker_mapping, load_speaker_mapping, save_speaker_mapping
from indextts_ray.data.store import write_shard_file
from indextts_ray.errors import DataError

# speaker s{i} has 1000 // (i + 1) samples (Zipf-like), plus two speakers tied at 60 and an integer speaker 7
# tied at 55 with s0017: totals 6,311 samples, 303 speakers, 23 with >= 50.
COUNTS = {f"s{i:04d}": 1000 // (i + 1) for i in range(300)} | {"amy": 60, "zed": 60, "7": 55}
TOP20 = ["s0000", "s0001", "s0002", "s0003", "s0004", "s0005", "s0006", "s0007", "s0008", "s0009", "s0010",
         "s0011", "s0012", "s0013", "s0014", "s0015", "amy", "zed", "s0016", "7"]


def _rows() -> list[dict]:
    rows = [{"id": f"{spk}-{j}", "audio_path": "a.wav", "text": "t", "speaker": int(spk) if spk == "7" else spk,
             "language": "ko", "duration": 1.0} for spk, n in COUNTS.items() for j in range(n)]
    random.Random(0).shuffle(rows)  # order must not matter
    return rows


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spk") / "manifest.jsonl"
    lines = [json.dumps(r) for r in _rows()]
    lines[10:10] = ["{not json", json.dumps({"id": "x", "audio_path": "a.wav", "text": "t"}),
                    json.dumps({"id": "y", "audio_path": "a.wav", "text": "t", "speaker": ["list"]}), ""]
    path.write_text("\n".join(lines) + "\n")
    return path


def _check(sm, skipped):
    assert sm.summary == {"total_samples": 6311, "unique_speakers": 303, "speakers_min_samples": 23,
                          "selected_speakers": 20, "selected_samples": 3608, "selected_percent": 57.17,
                          "skipped_rows": skipped}
    assert list(sm.mapping) == TOP20 and list(sm.mapping.values()) == list(range(20))
    assert sm.counts["amy"] == 60 and sm.counts["7"] == 55 and "s0017" not in sm.mapping


def test_manifest_exact_numbers(manifest):
    sm = build_speaker_mapping(manifest, top_k=20, min_samples=50)
    _check(sm, {"bad_speaker": 1, "missing_speaker": 1, "not_json": 1})
    assert "selected speakers        20 (top_k 20), 3,608 samples (57.17%)" in sm.report()


def test_shards_same_numbers_and_roundtrip(tmp_path):
    rows = _rows()
    for i, (split, part) in enumerate((("train", rows[:4000]), ("train", rows[4000:6000]), ("val", rows[6000:]))):
        (tmp_path / split).mkdir(exist_ok=True)
        table = pa.table({"id": [r["id"] for r in part], "speaker": [str(r["speaker"]) for r in part]})
        write_shard_file(table, tmp_path / split / f"shard-{i:05d}.arrow")
    sm = build_speaker_mapping(tmp_path, top_k=20, min_samples=50)
    _check(sm, {})
    out = save_speaker_mapping(sm, tmp_path / "speaker_mapping.json")
    back = load_speaker_mapping(out)
    assert back.mapping == sm.mapping and back.counts == sm.counts and back.summary == sm.summary
    assert build_speaker_mapping(tmp_path / "train", 20, 50).summary["total_samples"] == 6000


def test_min_samples_limits_selection(manifest):
    sm = build_speaker_mapping(manifest, top_k=500, min_samples=100)
    assert len(sm.mapping) == 10 and sm.summary["selected_samples"] == sum(1000 // (i + 1) for i in range(10))


def test_cli_prints_summary_and_writes(manifest, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["speakers", "--input", str(manifest), "--out", str(out), "--top-k", "20"]) == 0
    text = capsys.readouterr().out
    for expected in ("total samples            6,311", "unique speakers          303",
                     "speakers with >= 50      23", "3,608 samples (57.17%)"):
        assert expected in text
    assert json.loads(out.read_text())["mapping"]["s0000"] == 0


def test_errors_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="no shard-"):
        build_speaker_mapping(tmp_path)
    write_shard_file(pa.table({"id": ["a"]}), tmp_path / "shard-00000.arrow")
    with pytest.raises(DataError, match="column 'speaker'"):
        build_speaker_mapping(tmp_path)
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "old.parquet")  # a single Parquet file is still read
    with pytest.raises(DataError, match="column 'speaker'"):
        build_speaker_mapping(tmp_path / "old.parquet")
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"mapping": {"a": 0, "b": 2}}))
    with pytest.raises(DataError, match="not 0..1"):
        load_speaker_mapping(bad)
