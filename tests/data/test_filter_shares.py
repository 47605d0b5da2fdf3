"""`prepare` warns when one filter removes more than 10 % of a speaker, an emotion or a language, and reports
the rows the model's length limits dropped per emotion (issue 20)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from indextts_ray.commands.prepare_cmd import load_prepare_config
from indextts_ray.data.prepare import prepare_dataset
from tests.data.tiny_corpus import tone, write_wav

REPO = Path(__file__).resolve().parents[2]
EMOTIONS = ["neutral", "angry", "happy", "sad"]


def test_filters_that_empty_one_group_are_reported_with_counts(tmp_path, caplog, capsys):
    """48 rows: emotion i % 4 (12 each), speaker i % 3 (16 each), language i % 2 (24 each). Each filter below
    hits one group of one dimension over 10 % and every other group it touches under 10 %."""
    write_wav(tmp_path / "w/ok.wav", tone(1.5, seed=1))
    write_wav(tmp_path / "w/loud.wav", np.clip(20 * tone(1.5, seed=2), -1.0, 1.0))  # flat tops: clipped
    write_wav(tmp_path / "w/long.wav", tone(9.0, seed=3))  # 450 codes > the tiny model's max_mel_tokens 400
    special = {
        1: {"audio_path": "w/loud.wav"}, 5: {"audio_path": "w/loud.wav"},  # angry 2/12; ko 2/24, s1 s2 1/16
        3: {"text": "speech " * 300}, 7: {"text": "speech " * 300},  # sad 2/12 over max_text_tokens
        2: {"audio_path": "w/long.wav", "duration": 9.0},  # happy 1/12 over max_mel_tokens: no warning
        0: {"audio_path": "w/gone.wav"}, 6: {"audio_path": "w/gone.wav"}, 9: {"audio_path": "w/gone.wav"},  # s0 3/16
    }
    rows = [{"id": f"u{i:02d}", "audio_path": "w/ok.wav", "speaker": f"s{i % 3}", "emotion": EMOTIONS[i % 4],
             "language": "en" if i % 2 == 0 else "ko", "duration": 1.5,
             "text": f"hello number {i}" if i % 2 == 0 else f"안녕하세요 {i}번"} | special.get(i, {})
            for i in range(48)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = load_prepare_config(str(REPO / "configs/data/demo.yaml"), [
        f"data.root={tmp_path}", "data.manifest=m.jsonl", f"data.output_dir={tmp_path / 'out'}", "data.workers=0",
        "data.scan_workers=1", "data.features.kmeans_sample_frames=2000"], "tiny")
    with caplog.at_level(logging.WARNING, logger="indextts_ray.data.prepare"):
        stats = prepare_dataset(cfg).stats

    assert stats["rejected_by_reason"] == {"clipped": 2, "missing_audio": 3, "text_too_long": 2, "too_many_codes": 1}
    got = {(w["reason"], w["group"], w["value"], w["removed"], w["of"]) for w in stats["filter_shares"]["warnings"]}
    assert got == {("clipped", "emotion", "angry", 2, 12), ("text_too_long", "emotion", "sad", 2, 12),
                   ("missing_audio", "speaker", "s0", 3, 16)}
    assert stats["filter_shares"]["length_limits_by_emotion"] == {
        "happy": {"of": 12, "too_many_codes": 1}, "sad": {"of": 12, "text_too_long": 2}}
    assert json.loads((tmp_path / "out/stats.json").read_text())["filter_shares"] == stats["filter_shares"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "clipped removed 2 of 12 rows (17%) of emotion 'angry'" in warned
    assert "missing_audio removed 3 of 16 rows (19%) of speaker 's0'" in warned and len(warned) == 3
    assert "per emotion: happy 1 of 12, sad 2 of 12" in capsys.readouterr().out
