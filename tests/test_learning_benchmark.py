"""benchmarks/learning.py's recipe: 256 builtin codes with a matching tiny code vocabulary in the pipeline and in
every stage, the judges' code vectors, and `--stageN` overrides appended after the recipe's."""


import pytest

from indextts_ray.errors import ConfigError
from indextts_ray.pipeline.steps import stage_config
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def learning():
    return load_benchmark("learning")


def test_recipe_reaches_the_pipeline_and_every_stage(learning, tmp_path):
    cfg = learning.pipeline_config(tmp_path, 7, 20, 24, ["pipeline.eval.n_prompts=16"],
                                   {2: ["train.epochs=20", "train.lr=1e-3"], 3: ["train.epochs=1"]})
    assert (cfg.data.features.codebook_size, cfg.data.features.prosody_weight) == (256, 30.0)
    assert (cfg.model.number_mel_codes, cfg.model.start_mel_token, cfg.model.stop_mel_token) == (258, 256, 257)
    ec = cfg.pipeline.eval.emotion_control
    assert (ec.judge_code_vectors, ec.epochs, cfg.pipeline.eval.n_prompts) == (True, 40, 16)
    stages = {n: stage_config(cfg, n) for n in (1, 2, 3)}
    assert [s.model.number_mel_codes for s in stages.values()] == [258] * 3
    assert [s.train.epochs for s in stages.values()] == [16, 20, 1]  # stage 2: the CLI's 20 after the recipe's 16
    assert stages[2].train.lr == pytest.approx(1e-3)
    bad = learning.pipeline_config(tmp_path, 7, 20, 24, [], {1: ["train.no_such_key=1"]})
    with pytest.raises(ConfigError, match="no_such_key"):  # a stage override is checked like any other
        stage_config(bad, 1)
