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

from indextts_ray.config import Config, config_hash
from indextts_ray.errors import UserError
from indextts_ray.pipeline.receipts import Receipts, step_key
from indextts_ray.pipeline.steps import Step, build_graph, layout

log = logging.getLogger("indextts_ray.pipeline")
REPO_ROOT = Path(__file__).resolve().parents[2]


class StepFailed(RuntimeError):
    def __init__(self, step: str, detail: str, job_id: str | None = None):
        where = f"step {step!r}" + (f" (job {job_id})" if job_id else "")
        super().__init__(f"{where} failed: {detail}")
        self.step, self.job_id = step, job_id


class StepRejected(StepFailed, UserError):
    """A step stopped by its input or config (a UserError inside): the CLI prints one line and exits 2."""


def step_keys(cfg: Config, graph: list[Step]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for s in graph:
        keys[s.name] = step_key(s.name, s.key_parts(cfg), [keys[d] for d in s.deps])
    return keys


def _select(graph: list[Step], until: str | None) -> list[Step]:
    if until is None:
        return graph
    names = [s.name for s in graph]
    if until not in names:
        raise UserError(f"--until {until!r}: no such step; steps are {', '.join(names)}")
    return graph[: names.index(until) + 1]


def run_one(cfg: Config, name: str) -> dict:
    """Run one step in this process and write its receipt (what a Ray Job entrypoint calls)."""
    graph = build_graph(cfg)
    step = next((s for s in graph if s.name == name), None)
    if step is None:
        raise UserError(f"no step {name!r} in this pipeline; steps are {', '.join(s.name for s in graph)}")
    keys = step_keys(cfg, graph)
    receipts = Receipts(layout(cfg).work)
    started = time.time()
    try:
        metrics = step.run(cfg)
    except BaseException as e:
        receipts.write_failure(name, keys[name], f"{type(e).__name__}: {e}")
        raise
    return receipts.write(name, keys[name], step.outputs(layout(cfg)), metrics, started,
                          config_hash=config_hash(cfg))


def run_pipeline(cfg: Config, until: str | None = None, force: tuple[str, ...] = ()) -> list[str]:
    """Run every step whose receipt does not match, in order, in this process. Returns the steps run."""
    graph = _select(build_graph(cfg), until)
    keys = step_keys(cfg, graph)
    receipts = Receipts(layout(cfg).work)
    ran: list[str] = []
    for step in graph:
        if receipts.is_current(step.name, keys[step.name]) and step.name not in force:
            print(f"[pipeline] {step.name}: up to date (receipt matches), skipped", flush=True)
            continue
        print(f"[pipeline] {step.name}: running", flush=True)
        try:
            r = run_one(cfg, step.name)
        except Exception as e:
            dependents = [s.name for s in graph[graph.index(step) + 1:]]
            failed = StepRejected if isinstance(e, UserError) else StepFailed
            raise failed(step.name, f"{type(e).__name__}: {e}; not run: {', '.join(dependents) or 'none'}") from e
        ran.append(step.name)
        print(f"[pipeline] {step.name}: done in {r['seconds']:.1f}s {r['metrics']}", flush=True)
    return ran


def pipeline_status(cfg: Config) -> list[tuple[str, str, str]]:
    """(step, state, detail) for every step: done, stale (config/inputs changed), failed, pending."""
    graph = build_graph(cfg)
    keys = step_keys(cfg, graph)
    receipts = Receipts(layout(cfg).work)
    rows = []
    for s in graph:
        r, f = receipts.read(s.name), receipts.failure(s.name)
        if receipts.is_current(s.name, keys[s.name]):
            rows.append((s.name, "done", f"{r['seconds']:.1f}s {r['metrics']}"))
        elif f is not None and f["key"] == keys[s.name]:
            rows.append((s.name, "failed", f["error"] + (f" (job {f['job_id']})" if f.get("job_id") else "")))
        elif r is not None:
            rows.append((s.name, "stale", "config or inputs changed since the receipt"))
        else:
            rows.append((s.name, "pending", "after " + ", ".join(s.deps) if s.deps else ""))
    return rows


# ----------------------------------------------------------------------------- Ray Jobs


def submit_pipeline(cfg: Config, config_path: Path, overrides: list[str], address: str,
                    until: str | None = None, poll_s: float = 1.0, timeout_s: float | None = None) -> list[str]:
    """Submit each step as a Ray Job (`jobs/<step>.py`) once its dependencies succeeded; returns job ids."""
    from ray.job_submission import JobStatus

    client = _client(address)
    graph = _select(build_graph(cfg), until)
    keys = step_keys(cfg, graph)
    receipts = Receipts(layout(cfg).work)
    config_abs = str(Path(config_path).absolute())
    job_ids = []
    for step in graph:
        if receipts.is_current(step.name, keys[step.name]):
            print(f"[pipeline] {step.name}: up to date (receipt matches), skipped", flush=True)
            continue
        entry = " ".join([sys.executable, str(REPO_ROOT / "jobs" / f"{step.name}.py"), "--config", config_abs,
                          *[_quote(o) for o in overrides]])
        job_id = _submit(client, entry, f"indextts-{step.name}-{keys[step.name][:12]}-{int(time.time())}")
        job_ids.append(job_id)
        print(f"[pipeline] {step.name}: submitted as job {job_id}", flush=True)
        seen = 0
        deadline = time.time() + timeout_s if timeout_s else None
        while True:
            status = client.get_job_status(job_id)
            logs = client.get_job_logs(job_id)
            if len(logs) > seen:
                sys.stdout.write("".join(f"  [{step.name}] {ln}\n" for ln in logs[seen:].splitlines()))
                seen = len(logs)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            if deadline and time.time() > deadline:
                client.stop_job(job_id)
                status = JobStatus.STOPPED
                break
            time.sleep(poll_s)
        if status != JobStatus.SUCCEEDED or not receipts.is_current(step.name, keys[step.name]):
            tail = "\n".join(client.get_job_logs(job_id).splitlines()[-15:])
            receipts.write_failure(step.name, keys[step.name], f"job {status}", job_id=job_id)
            rest = [s.name for s in graph[graph.index(step) + 1:]]
            raise StepFailed(step.name, f"job ended {status}; not run: {', '.join(rest) or 'none'}; last log lines:\n{tail}",
                             job_id=job_id)
    return job_ids


def _submit(client, entrypoint: str, submission_id: str, wait_s: float = 300.0) -> str:
    """Submit, retrying while a freshly started head's job agent is not up yet."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
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


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
