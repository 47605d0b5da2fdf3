"""Run the step graph: in-process on local Ray (`run`) or as chained Ray Jobs (`submit`); show state (`status`).

Ray has no job dependencies, so `submit` walks the graph itself: a step is submitted when its dependencies
have succeeded, polled with `JobSubmissionClient` until it ends, its logs streamed; the job writes the
receipt. A failed step stops its dependents, and the error names the step, the job id and its last log lines.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from indextts_ray import storage
from indextts_ray.config import Config, config_hash, load_config
from indextts_ray.errors import UserError
from indextts_ray.pipeline.receipts import Receipts, step_key
from indextts_ray.pipeline.steps import Step, StepContext, build_graph, layout

log = logging.getLogger("indextts_ray.pipeline")
REPO_ROOT = Path(__file__).resolve().parents[2]


class StepFailed(RuntimeError):
    def __init__(self, step: str, detail: str, job_id: str | None = None):
        where = f"step {step!r}" + (f" (job {job_id})" if job_id else "")
        super().__init__(f"{where} failed: {detail}")
        self.step, self.job_id = step, job_id


class StepRejected(StepFailed, UserError):
    """A step stopped by its input or config (a UserError inside): the CLI prints one line and exits 2."""


def step_keys(cfg: Config, graph: list[Step], cache: dict | None = None) -> dict[str, tuple[str, dict]]:
    """(key, input hashes) of every step, in order: a key chains its dependencies' keys and holds the content
    hashes of its input files as they are now (so compute a step's key when its dependencies have run)."""
    keys: dict[str, tuple[str, dict]] = {}
    for s in graph:
        keys[s.name] = _key(cfg, s, keys, cache)
    return keys


def _key(cfg: Config, s: Step, keys: dict[str, tuple[str, dict]], cache: dict | None) -> tuple[str, dict]:
    inputs = s.inputs(cfg, cache)
    return step_key(s.name, [s.key_parts(cfg), inputs], [keys[d][0] for d in s.deps]), inputs


def _select(graph: list[Step], until: str | None) -> list[Step]:
    if until is None:
        return graph
    names = [s.name for s in graph]
    if until not in names:
        raise UserError(f"--until {until!r}: no such step; steps are {', '.join(names)}")
    return graph[: names.index(until) + 1]


def run_one(cfg: Config, name: str, fresh: bool = False, job_id: str | None = None) -> dict:
    """Run one step in this process and write its receipt (what a Ray Job entrypoint calls).

    `fresh` (`--force`) retrains a stage from step 0 even when its run dir holds a run of the same key."""
    graph = build_graph(cfg)
    step = next((s for s in graph if s.name == name), None)
    if step is None:
        raise UserError(f"no step {name!r} in this pipeline; steps are {', '.join(s.name for s in graph)}")
    receipts = Receipts(layout(cfg).work)
    cache = receipts.hash_cache()
    key, inputs = step_keys(cfg, graph[: graph.index(step) + 1], cache)[name]
    receipts.save_hash_cache(cache)
    started = time.time()
    receipts.mark_running(name, key, job_id=job_id)
    try:
        metrics = step.run(cfg, StepContext(key, inputs, fresh))
    except BaseException as e:
        receipts.write_failure(name, key, f"{type(e).__name__}: {e}", **({"job_id": job_id} if job_id else {}))
        raise
    finally:
        receipts.clear_running(name)
    return receipts.write(name, key, step.outputs(layout(cfg)), metrics, started, config_hash=config_hash(cfg),
                          inputs=inputs, **({"job_id": job_id} if job_id else {}))


def run_pipeline(cfg: Config, until: str | None = None, force: tuple[str, ...] = ()) -> list[str]:
    """Run every step whose receipt does not match, in order, in this process. Returns the steps run."""
    graph = _select(build_graph(cfg), until)
    _check_force(graph, force)
    receipts = Receipts(layout(cfg).work)
    keys: dict[str, tuple[str, dict]] = {}
    ran: list[str] = []
    for step in graph:
        cache = receipts.hash_cache()
        keys[step.name] = _key(cfg, step, keys, cache)  # now: its dependencies' outputs are final
        receipts.save_hash_cache(cache)
        if receipts.is_current(step.name, keys[step.name][0]) and step.name not in force:
            print(f"[pipeline] {step.name}: up to date (receipt matches), skipped", flush=True)
            continue
        print(f"[pipeline] {step.name}: running", flush=True)
        try:
            r = run_one(cfg, step.name, fresh=step.name in force)
        except Exception as e:
            dependents = [s.name for s in graph[graph.index(step) + 1:]]
            failed = StepRejected if isinstance(e, UserError) else StepFailed
            raise failed(step.name, f"{type(e).__name__}: {e}; not run: {', '.join(dependents) or 'none'}") from e
        ran.append(step.name)
        print(f"[pipeline] {step.name}: done in {r['seconds']:.1f}s {r['metrics']}", flush=True)
    return ran


def _check_force(graph: list[Step], force: tuple[str, ...]) -> None:
    unknown = [f for f in force if f not in {s.name for s in graph}]
    if unknown:
        raise UserError(f"--force {', '.join(unknown)}: no such step; steps are {', '.join(s.name for s in graph)}")


def pipeline_status(cfg: Config) -> list[tuple[str, str, str]]:
    """(step, state, detail) for every step: done, running (job id, progress), stale (config/inputs changed),
    failed, pending."""
    graph = build_graph(cfg)
    receipts = Receipts(layout(cfg).work)
    cache = receipts.hash_cache()
    keys = {n: k for n, (k, _) in step_keys(cfg, graph, cache).items()}
    rows = []
    for s in graph:
        r, f, running = receipts.read(s.name), receipts.failure(s.name), receipts.running(s.name, keys[s.name])
        if receipts.is_current(s.name, keys[s.name]):
            rows.append((s.name, "done", f"{r['seconds']:.1f}s {r['metrics']}"))
        elif running is not None:
            where = f"job {running['job_id']}" if running.get("job_id") else f"pid {running['pid']} on {running['host']}"
            progress = s.progress(cfg)
            rows.append((s.name, "running", f"{where}, {time.time() - running['started']:.0f}s"
                         + (f", {progress}" if progress else "")))
        elif f is not None and f["key"] == keys[s.name]:
            rows.append((s.name, "failed", f["error"] + (f" (job {f['job_id']})" if f.get("job_id") else "")))
        elif r is not None:
            rows.append((s.name, "stale", "config or inputs changed since the receipt"))
        else:
            rows.append((s.name, "pending", "after " + ", ".join(s.deps) if s.deps else ""))
    return rows


# ----------------------------------------------------------------------------- Ray Jobs


def submit_pipeline(cfg: Config, config_path: Path, overrides: list[str], address: str,
                    until: str | None = None, poll_s: float = 1.0, timeout_s: float | None = None,
                    force: tuple[str, ...] = ()) -> list[str]:
    """Submit each step as a Ray Job (`jobs/<step>.py`) once its dependencies succeeded; returns job ids.

    The jobs run on the cluster from a bundle in their runtime_env (`working_dir`): this package, `jobs/`,
    `configs/` and the pipeline config resolved here (work_dir and other paths absolute: paths on the cluster's
    shared storage), so no entrypoint names a path of this machine. `config_path`/`overrides` are what `cfg`
    was loaded from (kept for callers; the bundle holds their resolved result)."""
    import tempfile

    from ray.job_submission import JobStatus

    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="indextts-job-") as tmp:
        bundle = job_bundle(cfg, Path(tmp) / "bundle")
        # the keys the jobs will compute: from the bundled config, as the jobs load it
        cfg = load_config(bundle / BUNDLE_CONFIG, [f"pipeline.stage{n}.config={bundle / f'stages/stage{n}.yaml'}"
                                                  for n in (1, 2, 3)])
        graph = _select(build_graph(cfg), until)
        _check_force(graph, force)
        receipts = Receipts(layout(cfg).work)
        keys: dict[str, tuple[str, dict]] = {}
        job_ids = []
        for step in graph:
            cache = receipts.hash_cache()
            keys[step.name] = _key(cfg, step, keys, cache)
            receipts.save_hash_cache(cache)
            key = keys[step.name][0]
            if receipts.is_current(step.name, key) and step.name not in force:
                print(f"[pipeline] {step.name}: up to date (receipt matches), skipped", flush=True)
                continue
            entry = " ".join(["python", f"jobs/{step.name}.py", "--config", BUNDLE_CONFIG,
                              *(["--force"] if step.name in force else [])])
            job_id = _submit(client, entry, f"indextts-{step.name}-{key[:12]}-{int(time.time())}", bundle)
            job_ids.append(job_id)
            receipts.mark_running(step.name, key, job_id=job_id)
            print(f"[pipeline] {step.name}: submitted as job {job_id}", flush=True)
            status = _follow(client, job_id, step.name, poll_s, timeout_s)
            receipts.clear_running(step.name)
            if status != JobStatus.SUCCEEDED or not receipts.is_current(step.name, key):
                tail = "\n".join(client.get_job_logs(job_id).splitlines()[-15:])
                why = f"job ended {status}" if status != JobStatus.SUCCEEDED else \
                    f"job ended {status} but wrote no receipt under {receipts.dir} (is pipeline.work_dir on storage " \
                    "that the cluster and this machine share?)"
                receipts.write_failure(step.name, key, why, job_id=job_id)
                rest = [s.name for s in graph[graph.index(step) + 1:]]
                raise StepFailed(step.name, f"{why}; not run: {', '.join(rest) or 'none'}; last log lines:\n{tail}",
                                 job_id=job_id)
    return job_ids


BUNDLE_CONFIG = "pipeline.yaml"
BUNDLE_DIRS = ("indextts_ray", "jobs", "configs")
# the job's environment: unbuffered logs, and plain lines instead of progress bars in the job log
JOB_ENV = {"PYTHONUNBUFFERED": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def job_bundle(cfg: Config, dest: Path) -> Path:
    """The jobs' working_dir: this package, jobs/, configs/, and `pipeline.yaml` + `stages/stage<N>.yaml`, the
    configs resolved here with their relative paths made absolute (against this cwd) once."""
    import shutil

    from indextts_ray.config import dump_config
    from indextts_ray.pipeline.steps import _resolve

    for d in BUNDLE_DIRS:
        shutil.copytree(REPO_ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pipe = cfg.pipeline
    update: dict = {"work_dir": str(layout(cfg).work)}
    for n in (1, 2, 3):
        step = getattr(pipe, f"stage{n}")
        stage = load_config(_resolve(step.config), step.overrides)
        write = dest / "stages" / f"stage{n}.yaml"
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(dump_config(_absolute_paths(stage)), encoding="utf-8")
        update[f"stage{n}"] = step.model_copy(update={"config": f"stages/stage{n}.yaml", "overrides": []})
    if pipe.tokenizer.base is not None:
        update["tokenizer"] = pipe.tokenizer.model_copy(update={"base": _abs(pipe.tokenizer.base)})
    resolved = _absolute_paths(cfg).model_copy(update={"pipeline": pipe.model_copy(update=update)})
    (dest / BUNDLE_CONFIG).write_text(dump_config(resolved), encoding="utf-8")
    return dest


def _abs(p: str | None) -> str | None:
    return None if p is None or storage.is_remote(p) else str(Path(p).absolute())


def _absolute_paths(cfg: Config) -> Config:
    """Relative data/checkpoint paths -> absolute (this cwd), as a local run would read them."""
    from indextts_ray.train.trainer import absolutize

    cfg = absolutize(cfg)
    data = cfg.data.model_copy(update={k: _abs(getattr(cfg.data, k)) for k in ("manifest", "root", "output_dir",
                                                                              "tokenizer")})
    return cfg.model_copy(update={"data": data})


def _follow(client, job_id: str, step: str, poll_s: float, timeout_s: float | None):
    """Stream the job's log lines until it ends; returns its final status."""
    from ray.job_submission import JobStatus

    seen = 0
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            sys.stdout.write("".join(f"  [{step}] {ln}\n" for ln in logs[seen:].splitlines()))
            sys.stdout.flush()
            seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if deadline and time.time() > deadline:
            client.stop_job(job_id)
            return JobStatus.STOPPED
        time.sleep(poll_s)


def _submit(client, entrypoint: str, submission_id: str, working_dir: Path, wait_s: float = 300.0) -> str:
    """Submit, retrying while a freshly started head's job agent is not up yet."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                     runtime_env={"working_dir": str(working_dir), "env_vars": JOB_ENV})
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2.0)


def _client(address: str):
    """A job client; an auth failure becomes a one-line fix (as for `ray job submit`)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise UserError(f"{address}: the job server wants a token: export RAY_AUTH_MODE=token and put the cluster's "
                        "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)") from None
    except ConnectionError as e:
        raise UserError(f"{address}: no Ray job server reachable ({e}); start one (`ray start --head`) or fix "
                        "--address") from None

