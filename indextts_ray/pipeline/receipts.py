"""A receipt per finished step: what it was run with (its key), what it produced, its metrics and timings.

A step is skipped when its receipt's key equals the key it would run with now and its outputs still exist.
The key chains the keys of the step's dependencies, so changing one stage reruns it and its dependents only.
User-provided input files enter the key by (path, size, mtime) so editing a manifest reruns `prepare`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from indextts_ray.io_utils import atomic_write_json


def fingerprint_file(path: str | os.PathLike | None) -> list | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return [str(p), "missing"]
    if p.is_dir():
        return [str(p), sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def step_key(name: str, parts: object, dep_keys: list[str]) -> str:
    blob = json.dumps({"step": name, "parts": parts, "deps": dep_keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Receipts:
    def __init__(self, work_dir: Path):
        self.dir = Path(work_dir) / "receipts"

    def path(self, step: str) -> Path:
        return self.dir / f"{step}.json"

    def read(self, step: str) -> dict | None:
        p = self.path(step)
        return json.loads(p.read_text()) if p.exists() else None

    def failure(self, step: str) -> dict | None:
        p = self.dir / f"{step}.failed.json"
        return json.loads(p.read_text()) if p.exists() else None

    def is_current(self, step: str, key: str) -> bool:
        r = self.read(step)
        return r is not None and r["key"] == key and all(Path(o).exists() for o in r["outputs"])

    def write(self, step: str, key: str, outputs: list[Path], metrics: dict, started: float, **extra) -> dict:
        receipt = {
            "step": step, "key": key, "outputs": [str(o) for o in outputs], "metrics": metrics,
            "started": started, "finished": time.time(), "seconds": round(time.time() - started, 3), **extra,
        }
        atomic_write_json(self.path(step), receipt)
        (self.dir / f"{step}.failed.json").unlink(missing_ok=True)
        return receipt

    def write_failure(self, step: str, key: str, error: str, **extra) -> None:
        atomic_write_json(self.dir / f"{step}.failed.json", {"step": step, "key": key, "error": error,
                                                             "time": time.time(), **extra})
