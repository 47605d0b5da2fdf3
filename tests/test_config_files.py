"""Config files outside configs/ (issue 20): a data-section file works from any folder, and a missing preset
lists the presets that exist."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from indextts_ray.cli import main
from indextts_ray.commands.prepare_cmd import load_prepare_config
from indextts_ray.config import Config, ConfigError, load_config, presets, schema_for
from indextts_ray.data.config import DataConfig
from indextts_ray.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/data/demo.yaml"


def _variants(tmp_path: Path) -> dict[str, Path]:
    """The demo data file as a user would copy it: as is, without its marker, with only a few keys."""
    out = {}
    raw = yaml.safe_load(DEMO.read_text())
    for name, content in {
        "copy": DEMO.read_text(),
        "unmarked": yaml.safe_dump({k: v for k, v in raw.items() if k != "section"}),
        "few_keys": "manifest: corpus/m.jsonl\noutput_dir: prepared\n",
        "marked_ambiguous": "section: data\nmax_text_tokens: 100\n",  # a model key too: the marker decides
    }.items():
        p = tmp_path / "elsewhere" / name / "my_data.yaml"
        p.parent.mkdir(parents=True)
        p.write_text(content)
        out[name] = p
    return out


@pytest.mark.parametrize("kind", ["copy", "unmarked", "few_keys", "marked_ambiguous"])
def test_a_data_section_file_works_from_any_folder(tmp_path, monkeypatch, kind):
    path = _variants(tmp_path)[kind]
    monkeypatch.chdir(path.parent)  # relative to the working directory, as a user types it
    assert schema_for("my_data.yaml") is DataConfig
    cfg = load_prepare_config("my_data.yaml", ["data.workers=1"], "tiny")
    assert isinstance(cfg, Config) and cfg.data.workers == 1 and cfg.model.number_text_tokens == 256
    same = load_prepare_config("my_data.yaml", ["data.workers=1"], "tiny", data_section=True)
    assert same == cfg


def test_ambiguous_files_stay_whole_configs_and_bad_markers_fail(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("max_text_tokens: 100\n")  # a model key and a data key: not guessed
    assert schema_for(p) is Config
    p.write_text("model_dim: 64\nlayers: 2\n")
    assert schema_for(p) is ModelConfig
    p.write_text("section: dta\nmanifest: m.jsonl\n")
    with pytest.raises(ConfigError, match="'dta' is not one of model, train, data"):
        schema_for(p)


def test_cli_data_flag_and_missing_presets_list_the_existing_ones(tmp_path, capsys):
    copy = tmp_path / "mine.yaml"
    shutil.copy(DEMO, copy)
    for args in (["--data", "nope"], ["--data", str(tmp_path / "gone.yaml")], ["--data", str(copy), "--model", "huge"]):
        assert main(["prepare", *args]) == 2
        err = capsys.readouterr().err
        section = "model" if "huge" in args else "data"
        assert f"presets: {', '.join(presets(section))}" in err, err
    bad = tmp_path / "whole.yaml"
    bad.write_text("defaults:\n  - model: giant\n")
    with pytest.raises(ConfigError, match=r"no configs/model/giant.yaml \(presets: indextts2, tiny\)"):
        load_config(bad)
    # the data file anywhere, through the CLI: gets as far as the (missing) manifest
    assert main(["prepare", "--data", str(copy), "--model", "tiny", f"data.root={tmp_path}"]) == 2
    assert "manifest not found" in capsys.readouterr().err
