"""Ray Tune over Stage 2: each trial is one short Stage-2 run (a TorchTrainer fit) with sampled values.

Train V2 does not support `Tuner(TorchTrainer)`, so a trial is a *function* (`run_trial`) that fits its own
TorchTrainer through `train.trainer.run_training` in a thread and, meanwhile, reads the run's
`metrics.jsonl`: every finished evaluation window becomes one `tune.report` (the band score so far), which
is what ASHA stops hopeless trials on. Names are deterministic, so a rerun resumes at both levels: Tune
restores the experiment (`Tuner.restore`), and a restarted trial's TorchTrainer resumes its own run.

PBT/PB2 perturb λ/weight (or anything in `tune.space`) between *segments*: at every perturbation step a
trial reports its exported weights as the Tune checkpoint; a trial that exploits another continues from
those weights in a new Ray Train run (`<trial>-s<step>`) with the mutated values, the remaining steps,
no warm-up, and fresh AdamW moments (a Train V2 run cannot be started from another run's full state).

Layout under <run.output_dir>/<run.name>/ (the experiment dir):

    config.resolved.yaml          the search's config (a rerun with a different config is refused)
    tuner.pkl, t000-3f9a1c/ ...   Ray Tune's state and trial dirs (result.json, PBT checkpoints)
    runs/t000-3f9a1c/             the trial's Ray Train run (metrics.jsonl, step-* checkpoints)
    runs/t000-3f9a1c.lineage.json the runs (segments) the trial's history is made of, with step offsets
    results.csv, band.png         one row / one line per trial
    best.yaml, final/             the best trial's values as a Stage-2 config, its weights exported
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from indextts_ray.config import (
    Config,
    config_hash,
    deep_merge,
    dump_config,
    validate_config,
    write_resolved_config,
)
from indextts_ray.errors import ConfigError, UserError
from indextts_ray.io_utils import atomic_write_json, atomic_write_text
from indextts_ray.ray_connect import connect
from indextts_ray.train.export import export_run, latest_checkpoint
from indextts_ray.train.tracking import read_metrics
from indextts_ray.train.trainer import absolutize, check_inputs, run_training
from indextts_ray.tune.config import Distribution, TuneConfig
from indextts_ray.tune.report import plot_trials, write_table
from indextts_ray.tune.score import band_score, band_windows, merge_segments

log = logging.getLogger("indextts_ray.tune")

RUNS = "runs"
POINTER = "pointer.json"  # inside a PBT Tune checkpoint, next to the exported weights in export/


@dataclass
class TuneOutcome:
    """What a search produced (paths are absolute)."""

    exp_dir: Path
    rows: list[dict]  # one per trial, as in results.csv
    best_trial: str
    export: Path  # the Stage-2 result: the best trial's weights, official layout
    best_config: Path
    plot: Path
    table: Path
    restored: bool  # the experiment was resumed rather than started


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during the search: the table and plot are written and marked partial (`results.partial.json`),
    no best.yaml/final; the CLI exits 130. Rerunning the same command resumes."""


# ----------------------------------------------------------------------------- the search space


def _set(tree: dict, dotted: str, value) -> dict:
    """A nested dict with `value` at `dotted` (`train.loss.speaker` -> {"train": {"loss": {"speaker": v}}})."""
    *parents, leaf = dotted.split(".")
    node = out = {}
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return deep_merge(tree, out)


def _domain(d: Distribution):
    return {"loguniform": lambda: tune.loguniform(d.low, d.high), "uniform": lambda: tune.uniform(d.low, d.high),
            "choice": lambda: tune.choice(d.values), "grid": lambda: tune.grid_search(d.values)}[d.kind]()


def param_space(tc: TuneConfig) -> dict:
    """`tune.space` as Tune's nested param space ({"train": {"grl_lambda": tune.loguniform(...)}})."""
    space: dict = {}
    for key, d in sorted(tc.space.items()):
        space = _set(space, key, _domain(d))
    return space


def check_space(cfg: Config) -> None:
    """Every searched key must exist in the config schema and accept its range: fail before any trial."""
    problems = []
    base = cfg.model_dump(mode="json")
    for key, d in sorted(cfg.tune.space.items()):
        for value in ([d.low, d.high] if d.values is None else d.values):
            try:
                validate_config(_set(base, key, value), Config, origin=f"tune.space.{key}={value!r}")
            except ConfigError as e:
                problems.append(str(e))
    tc = cfg.tune
    if tc.scheduler in ("pbt", "pb2") and tc.perturbation_interval % cfg.train.checkpoint.every_steps:
        problems.append(f"tune.perturbation_interval ({tc.perturbation_interval}) must be a multiple of "
                        f"train.checkpoint.every_steps ({cfg.train.checkpoint.every_steps}): PBT needs a checkpoint there")
    if problems:
        raise ConfigError("; ".join(problems))


def _scheduler(tc: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2

    if tc.scheduler == "asha":
        return ASHAScheduler(time_attr="step", max_t=tc.max_steps, grace_period=tc.grace_steps,
                             reduction_factor=tc.reduction_factor)
    if tc.scheduler == "pbt":
        mutations: dict = {}
        for key, d in sorted(tc.space.items()):
            if d.kind != "grid":
                mutations = _set(mutations, key, d.values if d.kind == "choice" else _domain(d))
        return PopulationBasedTraining(time_attr="step", perturbation_interval=tc.perturbation_interval,
                                       hyperparam_mutations=mutations)
    if tc.scheduler == "pb2":
        bounds: dict = {}
        for key, d in sorted(tc.space.items()):
            bounds = _set(bounds, key, [d.low, d.high])
        return PB2(time_attr="step", perturbation_interval=tc.perturbation_interval, hyperparam_bounds=bounds)
    return FIFOScheduler()


def trial_name(trial) -> str:
    """`t<index>-<hash of the sampled values>`: stable across reruns of a seeded search, and a changed search
    space can never resume another configuration's Ray Train runs."""
    index = int(trial.trial_id.rsplit("_", 1)[-1])
    digest = hashlib.sha256(json.dumps(trial.config, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"t{index:03d}-{digest}"


# ----------------------------------------------------------------------------- one trial


def trial_config(base: dict, params: dict, segment: dict, runs_dir: Path) -> Config:
    """The Stage-2 config of one trial segment: base + sampled values, its own run, the remaining steps."""
    max_steps = base["tune"]["max_steps"]
    raw = deep_merge(base, params)
    raw["run"] = {**raw["run"], "output_dir": str(runs_dir), "name": segment["run"]}
    raw["train"] = {**raw["train"], "max_steps": max_steps - segment["offset"]}
    if segment.get("init"):  # a PBT segment starts from another trial's weights, already warmed up
        raw["train"] = {**raw["train"], "init_checkpoint": segment["init"], "warmup_steps": 0}
    return validate_config(raw, Config, origin=f"trial run {segment['run']}")


def _lineage(name: str, pointer: dict | None, checkpoint_dir: Path | None, runs_dir: Path) -> list[dict]:
    """The segments of this trial: its own run, or (after a PBT exploit) the donor's history + a new run."""
    if pointer is None:
        return [{"run": name, "offset": 0}]
    if pointer["trial"] == name:  # our own checkpoint (a restored or paused trial): same runs
        return pointer["segments"]
    step = pointer["step"]
    new = {"run": f"{name}-s{step:06d}", "offset": step, "init": str(runs_dir / f"{name}-s{step:06d}.init")}
    if not Path(new["init"]).exists():  # copy the donor's weights out of Tune's checkpoint (it may be rotated)
        shutil.copytree(checkpoint_dir / "export", new["init"] + ".tmp", dirs_exist_ok=True)
        os.replace(new["init"] + ".tmp", new["init"])
    return [*pointer["segments"], new]


def lineage_metrics(runs_dir: Path, segments: list[dict]) -> dict[int, dict]:
    """The trial's logged steps on one step axis over all its segments."""
    return merge_segments([(read_metrics(runs_dir / s["run"]), s["offset"]) for s in segments])


def run_trial(params: dict, base: dict) -> None:
    """Tune function trainable: fit this trial's Stage-2 run, reporting each finished evaluation window."""
    tc = TuneConfig.model_validate(base["tune"])
    name = tune.get_context().get_trial_name()
    runs_dir = Path(base["run"]["output_dir"]) / base["run"]["name"] / RUNS
    checkpoint = tune.get_checkpoint()  # PBT/PB2 only: this trial's or (after an exploit) another trial's
    pointer = None
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as d:
        if d is not None:
            pointer = json.loads((Path(d) / POINTER).read_text())
        segments = _lineage(name, pointer, Path(d) if d else None, runs_dir)
    atomic_write_json(runs_dir / f"{name}.lineage.json", segments)
    current = segments[-1]
    cfg = trial_config(base, params, current, runs_dir)
    low, high = cfg.train.band.low, cfg.train.band.high

    failure: list[BaseException] = []

    def fit() -> None:
        try:
            run_training(cfg)
        except BaseException as e:  # re-raised in the trial's thread below: the trial errors with it
            failure.append(e)

    thread = threading.Thread(target=fit, name=f"fit-{current['run']}", daemon=True)
    thread.start()
    reported = pointer["step"] if pointer else 0
    while True:
        running = thread.is_alive()
        metrics = lineage_metrics(runs_dir, segments)
        windows = band_windows(metrics, tc.window_steps)
        last_logged = max((s for s, m in metrics.items() if "speaker_acc" in m), default=0)
        for i, w in enumerate(windows):
            # while running, a window is final once a later step is logged
            if w.end_step <= reported or (running and w.end_step >= last_logged):
                continue
            finished = not running and not failure and i == len(windows) - 1
            result = {"step": w.end_step, "speaker_acc": w.speaker_acc, "mel_loss": w.mel_loss,
                      "grl_lambda": w.grl_lambda, "speaker_weight": w.speaker_weight, "finished": finished,
                      **band_score(windows[: i + 1], low, high, tc.mel_penalty, tc.reference_mel_loss)}
            _report(result, tc, name, segments, runs_dir, thread)
            reported = w.end_step
        if not running:
            break
        time.sleep(tc.poll_seconds)
    if failure:
        raise failure[0]


def _report(result: dict, tc: TuneConfig, name: str, segments: list[dict], runs_dir: Path,
            thread: threading.Thread) -> None:
    """tune.report; under PBT/PB2 at a perturbation step with the exported weights as the checkpoint."""
    step = result["step"]
    population = tc.scheduler in ("pbt", "pb2")
    perturbation_step = step % tc.perturbation_interval == 0
    if population and not perturbation_step and not result["finished"]:
        # PBT/PB2 act on perturbation steps only. A paused trial restarts from its last perturbation step, so a
        # report in between would come again after every restart.
        return
    if not population or not perturbation_step or step >= tc.max_steps:
        tune.report(result)
        return
    seg = segments[-1]
    step_dir = runs_dir / seg["run"] / f"step-{step - seg['offset']:08d}"
    while not (step_dir / "checksums.json").exists() and thread.is_alive():  # registered a moment after the log
        time.sleep(0.5)
    if not (step_dir / "checksums.json").exists():
        raise RuntimeError(f"{step_dir}: no checkpoint at a perturbation step (train.checkpoint.every_steps?)")
    with tempfile.TemporaryDirectory() as tmp:
        export_run(step_dir, Path(tmp) / "export")
        (Path(tmp) / POINTER).write_text(json.dumps({"trial": name, "step": step, "segments": segments}))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


# ----------------------------------------------------------------------------- the search


def _guard(cfg: Config, exp_dir: Path) -> None:
    """Resume only the same search: a different config in the same dir would mix incomparable trials."""
    written = exp_dir / "config.resolved.yaml"
    if written.exists():
        first = written.read_text(encoding="utf-8").splitlines()[0].removeprefix("# config_hash: ")
        if first != config_hash(cfg):
            raise UserError(f"{exp_dir} holds a search with another config (hash {first[:12]} != "
                            f"{config_hash(cfg)[:12]}): use another run.name, or delete that directory")
    write_resolved_config(cfg, exp_dir)


def _tuner(cfg: Config, exp_dir: Path) -> tuple[tune.Tuner, bool]:
    tc = cfg.tune
    # only the trial's own process: its TorchTrainer reserves the workers, and the validation read tasks
    # (train.scaling.ingest_cpus each) run outside both groups
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=cfg.model_dump(mode="json")),
                                    {"cpu": tc.trial_cpus})
    if tune.Tuner.can_restore(exp_dir):
        log.info("resuming the search in %s", exp_dir)
        return tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True), True
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tuner = tune.Tuner(
        trainable,
        param_space=param_space(tc),
        tune_config=tune.TuneConfig(
            metric=tc.metric, mode="max", scheduler=_scheduler(tc), num_samples=tc.num_samples,
            # seeded: a search restarted from scratch samples the same trials, so their runs resume. (Tune
            # ignores TuneConfig.max_concurrent_trials when given a BasicVariantGenerator: it goes here.)
            search_alg=BasicVariantGenerator(random_state=cfg.run.seed, max_concurrent=tc.max_concurrent_trials),
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(name=cfg.run.name, storage_path=cfg.run.output_dir, verbose=1),
    )
    return tuner, False


def check_state_api(tc: TuneConfig) -> None:
    """ASHA, PBT and PB2 stop trials while their TorchTrainer runs. Ray Train then frees the run's workers
    only when its placement-group cleaner sees the controller gone, through Ray's State API, which the
    dashboard serves; without it the stopped runs keep their CPUs/GPUs and the search waits forever."""
    if tc.scheduler == "none":
        return
    from ray.util.state import list_actors

    # this cluster's address, not Ray's guess: without RAY_ADDRESS the State API follows the newest local Ray's
    # address file, another instance's when several run on one machine (a test session beside a benchmark)
    address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    try:
        list_actors(address=address, limit=1, timeout=10, raise_on_missing_output=False)
    except Exception as e:  # ServerUnavailable, connection errors: whatever stops the cleaner too
        raise UserError(f"tune.scheduler={tc.scheduler} needs Ray's State API (the dashboard), which this Ray "
                        f"does not serve ({type(e).__name__}): start Ray with its dashboard (the default of "
                        "`ray start` / `ray.init()` with ray[default]), or use tune.scheduler=none") from None


def run_tune(cfg: Config) -> TuneOutcome:
    """Run (or resume) the Stage-2 search; write the table, plot, best config and the best trial's export."""
    cfg = absolutize(cfg)
    check_inputs(cfg)
    check_space(cfg)
    exp_dir = Path(cfg.run.output_dir) / cfg.run.name
    _guard(cfg, exp_dir)
    connect(log_to_driver=True)  # RAY_ADDRESS, a live `ray start` cluster, or a local Ray; never a stale one
    check_state_api(cfg.tune)
    tuner, restored = _tuner(cfg, exp_dir)
    grid = tuner.fit()
    return summarize(cfg, exp_dir, grid, restored)


def summarize(cfg: Config, exp_dir: Path, grid, restored: bool) -> TuneOutcome:
    """Score every trial from its runs' metrics, pick the best finished one, write the results."""
    tc, runs_dir = cfg.tune, exp_dir / RUNS
    low, high = cfg.train.band.low, cfg.train.band.high
    rows, traces = [], {}
    # Tune's own view of each trial: an interrupted search (Ctrl-C) leaves trials neither TERMINATED nor ERROR
    states = {Path(t.path).name: t.status for t in getattr(getattr(grid, "_experiment_analysis", None), "trials", [])
              if getattr(t, "path", None)}
    for result in (grid[i] for i in range(len(grid))):
        name = Path(result.path).name
        lineage = runs_dir / f"{name}.lineage.json"
        segments = json.loads(lineage.read_text()) if lineage.exists() else [{"run": name, "offset": 0}]
        traces[name] = lineage_metrics(runs_dir, segments)
        windows = band_windows(traces[name], tc.window_steps)
        last = result.metrics or {}
        status = "error" if result.error else "done" if last.get("finished") else \
            "interrupted" if states.get(name, "TERMINATED") not in ("TERMINATED", "ERROR") else "stopped"
        score = band_score(windows, low, high, tc.mel_penalty, tc.reference_mel_loss)
        # the value Tune ranked the trial by (its last report), so the table, best.yaml and Tune's "current best
        # trial" name the same trial; the trace may go on past a stopped trial's last report
        score[tc.metric] = last.get(tc.metric, math.nan)
        rows.append({"trial": name, "status": status, "steps": windows[-1].end_step if windows else 0, **score,
                     "grl_lambda": windows[-1].grl_lambda if windows else None,
                     "speaker_weight": windows[-1].speaker_weight if windows else None,
                     "run": segments[-1]["run"], "checkpoint": _has_checkpoint(runs_dir / segments[-1]["run"]),
                     **{f"param:{k}": v for k, v in sorted(_flatten(result.config or {}).items())}})
    rows.sort(key=lambda r: r["trial"])
    best = best_row(rows, tc.metric)
    ranked_first = best_row(rows, tc.metric, exportable_only=False)
    if best is not ranked_first:  # e.g. a trial the scheduler stopped before its first checkpoint
        log.warning("trial %s ranked first (%s %.4f) but was stopped before it wrote a checkpoint; the best trial "
                    "with weights to export is %s", ranked_first["trial"], tc.metric, ranked_first[tc.metric],
                    best["trial"] if best else "none")
    table = write_table(rows, exp_dir / "results.csv")
    plot = plot_trials(traces, low, high, exp_dir / "band.png", best=best["trial"] if best else None)
    partial = exp_dir / "results.partial.json"
    interrupted = [r["trial"] for r in rows if r["status"] == "interrupted"]
    if interrupted:
        atomic_write_json(partial, {"interrupted": interrupted, "time": time.time()})
        raise SearchInterrupted(f"search interrupted with {len(interrupted)} trials unfinished; partial results: {table} "
                                f"(marked by {partial.name}); rerun the same command to resume")
    partial.unlink(missing_ok=True)
    if best is None:
        states = ", ".join(f"{r['trial']}: {r['status']}" for r in rows)
        raise RuntimeError(f"no trial of {exp_dir} reported a score and wrote a checkpoint ({states}); see the trial "
                           "dirs' error.txt, or lower train.checkpoint.every_steps below the scheduler's grace period")
    best_cfg = validate_config(deep_merge(cfg.model_dump(mode="json"), _nest(best)), Config, origin="best trial")
    best_cfg = best_cfg.model_copy(update={"run": best_cfg.run.model_copy(update={"name": f"{cfg.run.name}-best"})})
    best_yaml = atomic_write_text(exp_dir / "best.yaml", (
        f"# best trial {best['trial']} of {exp_dir} ({tc.metric} {best[tc.metric]:.4f}); its weights: {exp_dir / 'final'}\n"
        f"# train Stage 2 with these values: indextts-ray train --config {exp_dir / 'best.yaml'}\n"
        + dump_config(best_cfg)))
    export = _export_best(runs_dir / best["run"], exp_dir / "final", best)
    return TuneOutcome(exp_dir, rows, best["trial"], export, best_yaml, plot, table, restored)


def best_row(rows: list[dict], metric: str, exportable_only: bool = True) -> dict | None:
    """Tune's rule (its reporter's "current best trial"): the highest last-reported value, the first trial on a
    tie; errored trials are left out, and so (unless `exportable_only` is off) are trials without a checkpoint,
    as the best trial's weights are exported."""
    best = None
    for r in rows:
        if r["status"] == "error" or math.isnan(r[metric]) or (exportable_only and not r["checkpoint"]):
            continue
        if best is None or r[metric] > best[metric]:
            best = r
    return best


def _has_checkpoint(run_dir: Path) -> bool:
    try:
        latest_checkpoint(run_dir)
    except UserError:
        return False
    return True


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _nest(row: dict) -> dict:
    params: dict = {}
    for k, v in row.items():
        if k.startswith("param:"):
            params = _set(params, k.removeprefix("param:"), v)
    return params


def _export_best(run_dir: Path, out: Path, best: dict) -> Path:
    """Export the best run's last checkpoint to `out` (swapped in whole; skipped when already that one)."""
    source = {"trial": best["trial"], "run": str(run_dir), "steps": best["steps"]}
    marker = out / "tune_source.json"
    if marker.exists() and json.loads(marker.read_text()) == source:
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_run(run_dir, tmp)
    atomic_write_json(tmp / "tune_source.json", source)
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
