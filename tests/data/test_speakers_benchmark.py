"""benchmarks/data_scale.py stays runnable: its long-tailed speaker counts are exact and a tiny run passes."""

import json

import numpy as np
import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("data_scale")


def test_speaker_counts_are_exact_at_reference_scale(bench):
    counts = bench.speaker_counts(2_783_826, 132_389, 14_244, seed=0)
    assert counts.sum() == 2_783_826 and len(counts) == 132_389 and (counts >= 50).sum() == 14_244
    assert counts.min() >= 1 and np.median(counts) < 20  # long-tailed: most speakers have few utterances


def test_tiny_run(bench, tmp_path, capsys):
    out = tmp_path / "numbers.json"
    assert bench.main(["--rows", "3000", "--speakers", "150", "--min50", "15", "--bad-every", "500",
                       "--work", str(tmp_path / "w"), "--skip-ray", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "accepted 2,994, rejected 6" in text  # 6 rows broken on purpose, all rejected
    assert "speakers with >= 50      15" in text
    stages = {s["stage"]: s for s in json.loads(out.read_text())}
    assert stages["speakers (shards)"]["rows"] == stages["plan + shard"]["rows"] > 2900
