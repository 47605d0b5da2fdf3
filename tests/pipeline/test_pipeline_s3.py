"""The whole recipe with `pipeline.work_dir` on an S3-compatible server (moto, `tests/conftest.py`): every step
reads and writes there (the synthetic audio excepted: `pipeline.synth.dir`), and a rerun skips everything."""

from pathlib import Path

import pytest

from indextts_ray import storage
from indextts_ray.cli import main
from indextts_ray.config import load_config
from indextts_ray.errors import ConfigError
from indextts_ray.model.checkpoint_io import load_export
from indextts_ray.pipeline.runner import pipeline_status, run_pipeline
from indextts_ray.pipeline.steps import layout
from tests.pipeline.test_pipeline import REPO, SMALL

DEMO = REPO / "configs/pipeline/demo.yaml"
STAGES = [f"pipeline.stage{n}.config={REPO / f'configs/demo/stage{n}.yaml'}" for n in (1, 2, 3)]


def test_an_object_store_work_dir_needs_a_local_corpus_folder(s3_bucket):
    cfg = load_config(DEMO, [f"pipeline.work_dir={s3_bucket}/work", *STAGES])
    with pytest.raises(ConfigError, match=r"pipeline.work_dir=s3://.* set pipeline.synth.dir to a local"):
        layout(cfg)


@pytest.mark.slow  # the demo pipeline (~3 min on 2 CPUs)
def test_pipeline_runs_end_to_end_on_s3(s3_bucket, ray_local, tmp_path):
    work = f"{s3_bucket}/work"
    overrides = [f"pipeline.work_dir={work}", f"pipeline.synth.dir={tmp_path / 'corpus'}", *STAGES, *SMALL]
    assert main(["pipeline", "run", "--config", str(DEMO), *overrides]) == 0

    steps = ["synth", "prepare", "speakers", "stage1", "stage2", "stage3", "export", "eval"]
    receipts = {s: storage.read_json(f"{work}/receipts/{s}.json") for s in steps}
    for s, r in receipts.items():  # every output of every step is an object on the store (the corpus excepted)
        assert r["outputs"] and all(storage.is_file(o) for o in r["outputs"]), s
        assert all(o.startswith(work + "/") for o in r["outputs"]) or s == "synth", s
    assert receipts["prepare"]["metrics"]["rows_written"] + receipts["prepare"]["metrics"]["rows_rejected"] == 24
    assert [receipts[f"stage{n}"]["metrics"]["steps"] for n in (1, 2, 3)] == [2, 2, 2]
    assert storage.name(storage.glob(f"{work}/runs/stage3", "state.pt", recursive=True)[-1].rsplit("/", 1)[0]) \
        == "step-00000002"
    with storage.local_copy(f"{work}/export") as export:
        model = load_export(export, device="cpu")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert storage.is_file(f"{work}/report/report.md") and storage.is_file(f"{work}/report/report.html")
    assert not list(Path(tmp_path).glob("*/receipts"))  # nothing of the work dir written locally

    cfg = load_config(DEMO, overrides)
    assert run_pipeline(cfg) == []  # receipts on the store match: nothing reruns
    assert {state for _, state, _ in pipeline_status(cfg)} == {"done"}
