"""The recipe as a DAG of steps: synth? -> tokenizer? -> prepare -> speakers -> stage1 -> stage2 -> stage3 -> export -> eval.

Each step is a function of the resolved pipeline `Config` that writes into `pipeline.work_dir`; the same
function runs in-process (`pipeline run`) and inside a Ray Job (`jobs/<step>.py`, `pipeline submit`). The work
dir may be an object-store URI (`storage.py`): every output then lives there (the synthetic corpus excepted:
audio is read from file paths, `pipeline.synth.dir`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from indextts_ray import storage
from indextts_ray.config import Config, config_to_dict, load_config
from indextts_ray.errors import ConfigError
from indextts_ray.pipeline.receipts import content_hash, fingerprint_file

log = logging.getLogger("indextts_ray.pipeline")


@dataclass(frozen=True)
class Layout:
    """Where every step's outputs live under the work dir (a `Path`, or a `storage.URI`: both join with `/`)."""

    work: Path | storage.URI
    synth_dir: Path | None = None  # pipeline.synth.dir

    @property
    def corpus(self) -> Path:
        return self.synth_dir or self.work / "corpus"

    @property
    def prepared(self) -> Path:
        return self.work / "prepared"

    @property
    def tokenizer(self) -> Path:
        return self.work / "tokenizer" / "bpe.model"

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
    p = cfg.pipeline
    storage.check(p.work_dir, "pipeline.work_dir")
    if p.synth.dir is not None and storage.is_remote(p.synth.dir):
        raise ConfigError(f"pipeline.synth.dir={p.synth.dir}: the corpus must be a local or shared folder (prepare "
                          "reads audio from file paths)")
    if p.synth.enabled and p.synth.dir is None and storage.is_remote(p.work_dir):
        raise ConfigError(f"pipeline.work_dir={p.work_dir} is an object store: set pipeline.synth.dir to a local or "
                          "shared folder for the synthetic corpus (prepare reads audio from file paths)")
    return Layout(storage.location(p.work_dir), Path(p.synth.dir).absolute() if p.synth.dir else None)


def data_config(cfg: Config) -> Config:
    """The pipeline config with data paths pointing into the work dir (synthetic manifest when enabled)."""
    lay = layout(cfg)
    update = {"output_dir": str(lay.prepared)}
    if cfg.pipeline.synth.enabled:
        update |= {"manifest": str(lay.corpus / "manifest.jsonl"), "root": str(lay.corpus)}
    elif cfg.data.manifest is None:
        raise ConfigError("data.manifest is not set (or enable pipeline.synth for the synthetic corpus)")
    if cfg.pipeline.tokenizer.enabled:
        if cfg.data.tokenizer is not None:
            raise ConfigError("pipeline.tokenizer.enabled makes the tokenizer; leave data.tokenizer unset "
                              "(or disable the step to use data.tokenizer as it is)")
        update["tokenizer"] = str(lay.tokenizer)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def stage_config(cfg: Config, stage: int) -> Config:
    """Stage N's config file + overrides, wired to the pipeline's data, mapping and previous stage's export."""
    lay = layout(cfg)
    step = getattr(cfg.pipeline, f"stage{stage}")
    # a search keeps its own dir: its trials' runs never mix with a plain run's checkpoints
    name = f"stage{stage}-tune" if step.tune else f"stage{stage}"
    wiring = [f"train.data_dir={lay.prepared}", f"run.output_dir={lay.runs}", f"run.name={name}"]
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


@dataclass(frozen=True)
class StepContext:
    """What a step runs with: its key, the content hashes of its inputs, and whether to start over (--force)."""

    key: str
    inputs: dict = field(default_factory=dict)
    fresh: bool = False


RUN_KEY = "pipeline_key.json"  # in a stage's run dir: the step key its checkpoints were trained under


def claim_run_dir(run_dir: Path | str, ctx: StepContext) -> None:
    """A run dir belongs to one step key: another key's (or an unmarked) run is deleted, so a changed init
    checkpoint, data or config trains from step 0 and never resumes, or returns early from, an old run."""
    marker = storage.join(run_dir, RUN_KEY)
    owner = storage.read_json(marker)["key"] if storage.is_file(marker) else None
    present = storage.exists(run_dir) if not storage.is_remote(run_dir) else bool(storage.listdir(run_dir))
    if present and (ctx.fresh or owner != ctx.key):
        why = "forced" if ctx.fresh else "trained with other inputs or config" if owner else "not made by this step"
        log.info("%s: %s; starting a fresh run", run_dir, why)
        storage.delete(run_dir)
    storage.write_json(marker, {"key": ctx.key, "inputs": ctx.inputs})


def run_synth(cfg: Config) -> dict:
    from indextts_ray.data.synth import make_corpus

    s = cfg.pipeline.synth
    manifest = make_corpus(layout(cfg).corpus, n_speakers=s.speakers, utts_per_speaker=s.utts_per_speaker,
                           languages=tuple(s.languages), seed=s.seed)
    return {"manifest": str(manifest)}


def run_tokenizer(cfg: Config) -> dict:
    """Train a BPE on the corpus text (normalised as prepare does), or extend `pipeline.tokenizer.base`."""
    from indextts_ray.data.tokenizer import (
        extend_tokenizer,
        load_tokenizer,
        manifest_texts,
        min_vocab_size,
        train_tokenizer,
    )

    t, data, out = cfg.pipeline.tokenizer, data_config(cfg).data, layout(cfg).tokenizer
    by_lang, skipped = manifest_texts(data.manifest, data.format, data.text)
    if t.base is None:
        texts = [x for xs in by_lang.values() for x in xs]
        # as prepare does: at least one piece per character of the corpus (a Korean corpus has hundreds)
        vocab = max(data.tokenizer_vocab_size, min_vocab_size(texts))
        if vocab > cfg.model.number_text_tokens:
            raise ConfigError(f"the corpus needs a tokenizer of at least {vocab} pieces (its distinct characters) > "
                              f"model.number_text_tokens {cfg.model.number_text_tokens}; set "
                              f"model.number_text_tokens={vocab} or more")
        with storage.staged_file(out) as local:  # written here, uploaded when the work dir is a store
            train_tokenizer(texts, local.with_suffix(""), vocab, t.character_coverage)
            made = load_tokenizer(local).vocab_size
        return {"vocab_size": made, "texts": len(texts), "rows_without_text": skipped}
    if t.language is not None and t.language not in by_lang:
        raise ConfigError(f"pipeline.tokenizer.language={t.language!r}: the manifest has rows of "
                          f"{', '.join(sorted(by_lang))} only")
    texts = by_lang[t.language] if t.language else [x for xs in by_lang.values() for x in xs]
    with storage.staged_file(out) as local:
        report = extend_tokenizer(t.base, texts, local, t.pieces, coverage_texts=by_lang,
                                  character_coverage=t.character_coverage)
    if report.new_vocab > cfg.model.number_text_tokens:
        raise ConfigError(f"{out}: {report.new_vocab} pieces > model.number_text_tokens "
                          f"{cfg.model.number_text_tokens}; set model.number_text_tokens={report.new_vocab} or more "
                          "(the init checkpoint's text embedding grows on load, old rows unchanged)")
    for lang in sorted(by_lang):
        print(f"[tokenizer] {lang}: unknown characters {1 - report.coverage_before[lang]['coverage']:.2%} -> "
              f"{1 - report.coverage_after[lang]['coverage']:.2%}")
    return {"vocab_size": report.new_vocab, "added": report.added, "base_vocab": report.base_vocab,
            **{f"unknown_after/{lang}": 1 - c["coverage"] for lang, c in report.coverage_after.items()}}


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
    with storage.staged_file(layout(cfg).mapping) as local:
        save_speaker_mapping(sm, local)
    print(sm.report())
    return {"selected_speakers": len(sm.mapping), **{k: v for k, v in sm.summary.items() if isinstance(v, int | float)}}


def run_stage(cfg: Config, stage: int, ctx: StepContext) -> dict:
    from indextts_ray.train.export import export_run
    from indextts_ray.train.tracking import read_metrics
    from indextts_ray.train.trainer import run_training

    scfg = stage_config(cfg, stage)
    run_dir = storage.join(scfg.run.output_dir, scfg.run.name)
    claim_run_dir(run_dir, ctx)
    if getattr(cfg.pipeline, f"stage{stage}").tune:
        if storage.is_remote(run_dir):
            raise ConfigError(f"pipeline.stage{stage}.tune: a Tune search needs a local or shared pipeline.work_dir "
                              f"(not {cfg.pipeline.work_dir}) for now")
        return run_tuned_stage(scfg, layout(cfg).final(stage))
    run_training(scfg)
    export_run(run_dir, layout(cfg).final(stage))
    metrics = read_metrics(run_dir)
    last = metrics[max(metrics)] if metrics else {}
    vals = [m["val_loss"] for m in metrics.values() if "val_loss" in m]
    return {"steps": max(metrics) if metrics else 0, "mel_loss": last.get("mel_loss"),
            "best_val_loss": min(vals) if vals else None}


def run_tuned_stage(scfg: Config, final: Path) -> dict:
    """The Ray Tune search in the stage's run dir; its best trial's export is copied to `final`."""
    from indextts_ray.train.export import copy_dir
    from indextts_ray.tune.search import run_tune

    outcome = run_tune(scfg)
    copy_dir(outcome.export, final)
    best = next(r for r in outcome.rows if r["trial"] == outcome.best_trial)
    return {"best_trial": outcome.best_trial, "trials": len(outcome.rows), "steps": best.get("steps"),
            scfg.tune.metric: best.get(scfg.tune.metric), "best_config": str(outcome.best_config)}


def run_export(cfg: Config) -> dict:
    from indextts_ray.train.export import export_run

    out = export_run(layout(cfg).runs / "stage3", layout(cfg).export)
    return {"export": str(out)}


def run_eval(cfg: Config) -> dict:
    """Evaluate the three stage exports on the held-out shards (with `pipeline.eval.emotion_control`: also
    emotion-controlled generation); the report goes to `<work>/report/`."""
    from indextts_ray.eval.emotion_control import EmotionControlOptions
    from indextts_ray.eval.evaluate import EvalOptions, evaluate_and_report

    lay = layout(cfg)
    ec = cfg.pipeline.eval.emotion_control
    control = EmotionControlOptions(speakers=ec.speakers, texts=ec.texts, alpha=ec.alpha, max_codes=ec.max_codes,
                                    splits=tuple(ec.splits), reference=ec.reference, epochs=ec.epochs,
                                    judge_code_vectors=ec.judge_code_vectors)
    # exports are read from local copies on a store; the report is written here and uploaded whole
    exports = {f"stage{n}": storage.cached_copy(lay.final(n)) for n in (1, 2, 3)}
    with storage.staged_dir(lay.report, last=("report.html",)) as report:
        summary = evaluate_and_report(exports, lay.prepared, report,
                                      EvalOptions(max_items=cfg.pipeline.eval.max_items,
                                                  probe_splits=tuple(cfg.pipeline.eval.probe_splits),
                                                  max_probe_clips=cfg.pipeline.eval.max_probe_clips,
                                                  n_prompts=cfg.pipeline.eval.n_prompts,
                                                  emotion_control=control if ec.enabled else None))
    return {"report": str(lay.report / "report.md"), **summary["flat"]}


def stage_inputs(cfg: Config, stage: int, cache: dict | None = None) -> dict:
    """Content hashes of what a stage trains from: init checkpoint, prepared data (dataset.json lists every
    shard's sha256), speaker mapping. They enter the step key and the receipt."""
    scfg = stage_config(cfg, stage)
    tc = scfg.train
    return {"init_checkpoint": content_hash(tc.init_checkpoint, cache),
            "data": {d: content_hash(storage.join(d, "dataset.json"), cache) for d in tc.data_dirs},
            "speaker_mapping": content_hash(tc.speaker_mapping, cache)}


def stage_progress(cfg: Config, stage: int) -> str:
    """`step 12/40` from the stage's metrics.jsonl (what `pipeline status` shows for a running stage)."""
    from indextts_ray.train.tracking import read_metrics

    scfg = stage_config(cfg, stage)
    name = scfg.run.name
    if getattr(cfg.pipeline, f"stage{stage}").tune:
        trials = sorted((Path(scfg.run.output_dir) / name / "runs").glob("*.lineage.json"))
        return f"{len(trials)} trials started"
    metrics = read_metrics(storage.join(scfg.run.output_dir, name))
    return f"step {max(metrics) if metrics else 0}/{scfg.train.max_steps or '?'}"


def _manifest_fingerprint(cfg: Config) -> str | None:
    """A user manifest's fingerprint; the synthetic one is covered by the synth step's key."""
    return None if cfg.pipeline.synth.enabled else fingerprint_file(cfg.data.manifest)


@dataclass(frozen=True)
class Step:
    name: str
    deps: tuple[str, ...]
    run: Callable[[Config, StepContext], dict]
    key_parts: Callable[[Config], object]  # what the step's result depends on (besides its deps and inputs)
    outputs: Callable[[Layout], list[Path]]
    # content hashes of input files (computed when the step is due: after its dependencies ran)
    inputs: Callable[[Config, dict], dict] = lambda c, cache: {}
    progress: Callable[[Config], str] = lambda c: ""


def _plain(fn: Callable[[Config], dict]) -> Callable[[Config, StepContext], dict]:
    return lambda c, ctx: fn(c)


def _stage_step(n: int, deps: tuple[str, ...]) -> Step:
    return Step(f"stage{n}", deps, lambda c, ctx: run_stage(c, n, ctx),
                lambda c: [config_to_dict(stage_config(c, n)), getattr(c.pipeline, f"stage{n}").tune],
                lambda lay: [lay.final(n) / "gpt.pth"],
                inputs=lambda c, cache: stage_inputs(c, n, cache), progress=lambda c: stage_progress(c, n))


def build_graph(cfg: Config) -> list[Step]:
    """Steps in execution order (a topological order of the DAG)."""
    corpus_deps = ("synth",) if cfg.pipeline.synth.enabled else ()
    steps = []
    if cfg.pipeline.synth.enabled:
        steps.append(Step("synth", (), _plain(run_synth), lambda c: config_to_dict(c.pipeline.synth),
                          lambda lay: [lay.corpus / "manifest.jsonl"]))
    prepare_deps = corpus_deps
    if cfg.pipeline.tokenizer.enabled:
        steps.append(Step("tokenizer", corpus_deps, _plain(run_tokenizer),
                          lambda c: [config_to_dict(c.pipeline.tokenizer), config_to_dict(c.data.text),
                                     c.data.tokenizer_vocab_size, fingerprint_file(c.pipeline.tokenizer.base),
                                     _manifest_fingerprint(c)],
                          lambda lay: [lay.tokenizer]))
        prepare_deps = (*corpus_deps, "tokenizer")
    steps += [
        Step("prepare", prepare_deps, _plain(run_prepare),
             lambda c: [config_to_dict(data_config(c).data), config_to_dict(c.model),
                        _manifest_fingerprint(c)],
             lambda lay: [lay.prepared / "dataset.json"]),
        Step("speakers", ("prepare",), _plain(run_speakers), lambda c: config_to_dict(c.pipeline.speakers),
             lambda lay: [lay.mapping]),
        _stage_step(1, ("prepare",)),
        _stage_step(2, ("stage1", "speakers")),
        _stage_step(3, ("stage2",)),
        Step("export", ("stage3",), _plain(run_export), lambda c: None, lambda lay: [lay.export / "gpt.pth"]),
    ]
    # eval (owned by indextts_ray/eval): reads the stage exports and prepared val shards, writes <work>/report
    if cfg.pipeline.eval.enabled:
        steps.append(Step("eval", ("export",), _plain(run_eval), lambda c: config_to_dict(c.pipeline.eval),
                          lambda lay: [lay.report / "report.md", lay.report / "report.html"]))
    return steps
