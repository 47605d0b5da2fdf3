"""The recipe as a DAG of steps: synth? -> prepare -> speakers -> stage1 -> stage2 -> stage3 -> export -> eval.

Each step is a function of the resolved pipeline `Config` that writes into `pipeline.work_dir`; the same
function runs in-process (`pipeline run`) and inside a Ray Job (`jobs/<step>.py`, `pipeline submit`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indextts_ray.config import Config, config_to_dict, load_config
from indextts_ray.errors import ConfigError
from indextts_ray.pipeline.receipts import fingerprint_file

log = logging.getLogger("indextts_ray.pipeline")


@dataclass(frozen=True)
class Layout:
    """Where every step's outputs live under the work dir."""

    work: Path

    @property
    def corpus(self) -> Path:
        return self.work / "corpus"

    @property
    def prepared(self) -> Path:
        return self.work / "prepared"

    @property
    def mapping(self) -> Path:
        return self.work / "speaker_mapping.json"

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def final(self, stage: int) -> Path:
        return self.runs / f"stage{stage}" / "final"

    @property
    def export(self) -> Path:
        return self.work / "export"

    @property
    def report(self) -> Path:
        return self.work / "report"


def layout(cfg: Config) -> Layout:
    return Layout(Path(cfg.pipeline.work_dir).absolute())


def data_config(cfg: Config) -> Config:
    """The pipeline config with data paths pointing into the work dir (synthetic manifest when enabled)."""
    lay = layout(cfg)
    update = {"output_dir": str(lay.prepared)}
    if cfg.pipeline.synth.enabled:
        update |= {"manifest": str(lay.corpus / "manifest.jsonl"), "root": str(lay.corpus)}
    elif cfg.data.manifest is None:
        raise ConfigError("data.manifest is not set (or enable pipeline.synth for the synthetic corpus)")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def stage_config(cfg: Config, stage: int) -> Config:
    """Stage N's config file + overrides, wired to the pipeline's data, mapping and previous stage's export."""
    lay = layout(cfg)
    step = getattr(cfg.pipeline, f"stage{stage}")
    wiring = [f"train.data_dir={lay.prepared}", f"run.output_dir={lay.runs}", f"run.name=stage{stage}"]
    if stage > 1:
        wiring.append(f"train.init_checkpoint={lay.final(stage - 1)}")
    if stage == 2:
        wiring.append(f"train.speaker_mapping={lay.mapping}")
    scfg = load_config(_resolve(step.config), [*wiring, *step.overrides])
    if scfg.model != cfg.model:
        raise ConfigError(f"pipeline.stage{stage}.config {step.config}: its model section differs from the pipeline's "
                          "(data are prepared for the pipeline's model); use the same `model:` in both")
    return scfg


def _resolve(path: str) -> Path:
    from indextts_ray.config import CONFIGS_DIR

    p = Path(path)
    if p.exists():
        return p
    if (CONFIGS_DIR.parent / p).exists():
        return CONFIGS_DIR.parent / p
    raise ConfigError(f"stage config not found: {path}")


# ----------------------------------------------------------------------------- step functions (-> metrics)


def run_synth(cfg: Config) -> dict:
    from indextts_ray.data.synth import make_corpus

    s = cfg.pipeline.synth
    manifest = make_corpus(layout(cfg).corpus, n_speakers=s.speakers, utts_per_speaker=s.utts_per_speaker,
                           languages=tuple(s.languages), seed=s.seed)
    return {"manifest": str(manifest)}


def run_prepare(cfg: Config) -> dict:
    from indextts_ray.data.prepare import prepare_dataset

    # an interrupted prepare resumes; one prepared from another config/manifest starts over
    result = prepare_dataset(data_config(cfg), restart="if_changed")
    return {"rows_written": result.stats["rows_out"], "rows_rejected": result.stats["rows_rejected"],
            "hours": result.stats["hours"]["total"]}


def run_speakers(cfg: Config) -> dict:
    from indextts_ray.data.speakers import build_speaker_mapping, save_speaker_mapping

    s = cfg.pipeline.speakers
    sm = build_speaker_mapping(layout(cfg).prepared / "train", top_k=s.top_k, min_samples=s.min_samples)
    save_speaker_mapping(sm, layout(cfg).mapping)
    print(sm.report())
    return {"selected_speakers": len(sm.mapping), **{k: v for k, v in sm.summary.items() if isinstance(v, int | float)}}


def run_stage(cfg: Config, stage: int) -> dict:
    from indextts_ray.train.export import export_run
    from indextts_ray.train.tracking import read_metrics
    from indextts_ray.train.trainer import run_training

    scfg = stage_config(cfg, stage)
    run_training(scfg)
    run_dir = Path(scfg.run.output_dir) / scfg.run.name
    export_run(run_dir, layout(cfg).final(stage))
    metrics = read_metrics(run_dir)
    last = metrics[max(metrics)] if metrics else {}
    vals = [m["val_loss"] for m in metrics.values() if "val_loss" in m]
    return {"steps": max(metrics) if metrics else 0, "mel_loss": last.get("mel_loss"),
            "best_val_loss": min(vals) if vals else None}


def run_export(cfg: Config) -> dict:
    from indextts_ray.train.export import export_run

    out = export_run(layout(cfg).runs / "stage3", layout(cfg).export)
    return {"export": str(out)}


def run_eval(cfg: Config) -> dict:
    """Evaluate the three stage exports on the held-out shards; the report goes to `<work>/report/`."""
    from indextts_ray.eval.evaluate import EvalOptions, evaluate_and_report

    lay = layout(cfg)
    summary = evaluate_and_report({f"stage{n}": lay.final(n) for n in (1, 2, 3)}, lay.prepared, lay.report,
                                  EvalOptions(max_items=cfg.pipeline.eval.max_items))
    return {"report": str(lay.report / "report.md"), **summary["flat"]}


@dataclass(frozen=True)
class Step:
    name: str
    deps: tuple[str, ...]
    run: Callable[[Config], dict]
    key_parts: Callable[[Config], object]  # what the step's result depends on (besides its deps)
    outputs: Callable[[Layout], list[Path]]


def _stage_step(n: int, deps: tuple[str, ...]) -> Step:
    return Step(f"stage{n}", deps, lambda c: run_stage(c, n),
                lambda c: [config_to_dict(stage_config(c, n)), fingerprint_file(stage_config(c, n).train.init_checkpoint)
                           if n == 1 else None],
                lambda lay: [lay.final(n) / "gpt.pth"])


def build_graph(cfg: Config) -> list[Step]:
    """Steps in execution order (a topological order of the DAG)."""
    prepare_deps = ("synth",) if cfg.pipeline.synth.enabled else ()
    steps = []
    if cfg.pipeline.synth.enabled:
        steps.append(Step("synth", (), run_synth, lambda c: config_to_dict(c.pipeline.synth),
                          lambda lay: [lay.corpus / "manifest.jsonl"]))
    steps += [
        Step("prepare", prepare_deps, run_prepare,
             lambda c: [config_to_dict(data_config(c).data), config_to_dict(c.model),
                        None if c.pipeline.synth.enabled else fingerprint_file(c.data.manifest)],
             lambda lay: [lay.prepared / "dataset.json"]),
        Step("speakers", ("prepare",), run_speakers, lambda c: config_to_dict(c.pipeline.speakers),
             lambda lay: [lay.mapping]),
        _stage_step(1, ("prepare",)),
        _stage_step(2, ("stage1", "speakers")),
        _stage_step(3, ("stage2",)),
        Step("export", ("stage3",), run_export, lambda c: None, lambda lay: [lay.export / "gpt.pth"]),
    ]
    # eval (owned by indextts_ray/eval): reads the stage exports and prepared val shards, writes <work>/report
    if cfg.pipeline.eval.enabled:
        steps.append(Step("eval", ("export",), run_eval, lambda c: config_to_dict(c.pipeline.eval),
                          lambda lay: [lay.report / "report.md", lay.report / "report.html"]))
    return steps
