from pathlib import Path

import pytest

from indextts_ray.config import Config, config_hash, load_config, schema_for, write_resolved_config
from indextts_ray.errors import ConfigError
from indextts_ray.model.config import ModelConfig

REPO = Path(__file__).resolve().parent.parent
ALL_CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(ALL_CONFIGS) >= 2


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, schema_for(path))


def test_official_model_values():
    m = load_config(REPO / "configs/model/indextts2.yaml")
    assert (m.model_dim, m.layers, m.heads, m.number_text_tokens, m.number_mel_codes) == (1280, 24, 20, 12000, 8194)
    assert m.emo_condition_module.num_blocks == 4 and m.condition_module.num_blocks == 6


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_composition_and_overrides(tmp_path):
    _write(tmp_path, "base.yaml", "run:\n  seed: 7\n  name: base\n")
    p = _write(tmp_path, "top.yaml", "defaults:\n  - base.yaml\n  - model: tiny\nrun:\n  name: top\n")
    cfg = load_config(p, ["model.layers=3", "run.output_dir=/tmp/x"])
    assert cfg.run.seed == 7 and cfg.run.name == "top" and cfg.run.output_dir == "/tmp/x"
    assert cfg.model.model_dim == 32 and cfg.model.layers == 3
    assert cfg.model.condition_module.output_size == 32


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    p = _write(tmp_path, "bad.yaml", "defaults:\n  - model: tiny\nmodel:\n  model_dimm: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "bad.yaml" in msg and "model.model_dimm" in msg and "did you mean 'model.model_dim'" in msg


def test_unknown_override_key_suggests():
    with pytest.raises(ConfigError, match=r"did you mean 'run.seed'"):
        load_config(None, ["run.sed=3"])


def test_bad_type_and_range_fail(tmp_path):
    with pytest.raises(ConfigError, match=r"model.layers"):
        load_config(None, ["model.layers=many"])
    with pytest.raises(ConfigError, match=r"model.dropout"):
        load_config(None, ["model.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"not divisible"):
        load_config(None, ["model.heads=7"])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.layers=x", "run.seed=y"])
    assert "model.layers" in str(e.value) and "run.seed" in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "x.yaml", "a: [1,\n"))
    with pytest.raises(ConfigError, match="circular"):
        load_config(_write(tmp_path, "loop.yaml", "defaults: [loop.yaml]\n"))


def test_resolved_config_written_with_hash(tmp_path):
    cfg = load_config(None, ["run.seed=5"])
    out = write_resolved_config(cfg, tmp_path / "run")
    text = out.read_text()
    assert text.startswith(f"# config_hash: {config_hash(cfg)}")
    assert config_hash(cfg) != config_hash(Config())
    # the written file reloads to the same config
    assert config_hash(load_config(out, schema=Config)) == config_hash(cfg)


def test_section_schema_for_model_files():
    assert schema_for(REPO / "configs/model/tiny.yaml") is ModelConfig
