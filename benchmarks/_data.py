"""A prepared demo corpus for the benchmarks (synth + prepare through the pipeline), made once and reused."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepared_data(work: Path) -> Path:
    from indextts_ray.config import load_config
    from indextts_ray.pipeline.runner import run_pipeline
    from indextts_ray.pipeline.steps import layout

    cfg = load_config(REPO / "configs/pipeline/demo.yaml", [f"pipeline.work_dir={work}"])
    run_pipeline(cfg, until="prepare")  # receipts: a second benchmark run reuses the data
    return layout(cfg).prepared
