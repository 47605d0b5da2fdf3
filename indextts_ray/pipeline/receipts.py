"""A receipt per finished step: what it was run with (its key), what it produced, its metrics and timings.

A step is skipped when its receipt's key equals the key it would run with now and its outputs still exist.
The key chains the keys of the step's dependencies, so changing one stage reruns it and its dependents only.
User-provided input files enter the key by (path, size, mtime) so editing a manifest reruns `prepare`; a stage's
key holds the content hashes of its init checkpoint and data (`content_hash`), recorded in its receipt.
A step in progress has a `<step>.running.json` marker (host, pid, job id), which `pipeline status` shows.
The work dir, and so the receipts, may be on an object store (`storage.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

from indextts_ray import storage
from indextts_ray.io_utils import sha256_file


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


def content_hash(path: str | os.PathLike | None, cache: dict | None = None) -> str | None:
    """sha256 over a file's bytes, or over a directory's files (relative name + bytes); None for None.

    `cache` maps (path, size, mtime_ns) to a hash so an unchanged multi-GB checkpoint is read once.
    """
    if path is None:
        return None
    if storage.is_remote(path):
        return _remote_content_hash(str(path), cache)
    p = Path(path)
    if not p.exists():
        return "missing"
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        k = f"{f.absolute()}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(k) if cache is not None else None
        if digest is None:
            digest = sha256_file(f)
            if cache is not None:
                cache[k] = digest
        h.update(f"{f.relative_to(p).as_posix() if p.is_dir() else ''}:{digest};".encode())
    return h.hexdigest()


def _remote_content_hash(loc: str, cache: dict | None) -> str:
    """`content_hash` of an object or a folder of objects: the same hash as the same files on disk."""
    info = storage.info(loc)
    if info.type == storage.pafs.FileType.NotFound:
        return "missing"
    is_dir = info.type == storage.pafs.FileType.Directory
    files = storage.tree_stamp(loc) if is_dir else [("", int(info.size), int(info.mtime_ns or 0))]
    h = hashlib.sha256()
    for rel, size, mtime in files:
        f = storage.join(loc, rel) if rel else loc
        k = f"{f}|{size}|{mtime}"
        digest = cache.get(k) if cache is not None else None
        if digest is None:
            digest = storage.sha256(f)
            if cache is not None:
                cache[k] = digest
        h.update(f"{rel}:{digest};".encode())
    return h.hexdigest()


def step_key(name: str, parts: object, dep_keys: list[str]) -> str:
    blob = json.dumps({"step": name, "parts": parts, "deps": dep_keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Receipts:
    def __init__(self, work_dir: Path | str):
        self.dir = storage.location(storage.join(work_dir, "receipts"))  # a Path, or a URI on a store

    def path(self, step: str) -> Path | str:
        return self.dir / f"{step}.json"

    def read(self, step: str) -> dict | None:
        p = self.path(step)
        return storage.read_json(p) if storage.is_file(p) else None

    def failure(self, step: str) -> dict | None:
        p = self.dir / f"{step}.failed.json"
        return storage.read_json(p) if storage.is_file(p) else None

    def is_current(self, step: str, key: str) -> bool:
        r = self.read(step)
        return r is not None and r["key"] == key and all(storage.exists(o) for o in r["outputs"])

    @property
    def hash_cache_path(self) -> Path | str:
        return self.dir.parent / ".content_hashes.json"  # beside receipts/: a cache, not a receipt

    def hash_cache(self) -> dict:
        p = self.hash_cache_path
        try:
            return storage.read_json(p)
        except (OSError, ValueError):
            return {}

    def save_hash_cache(self, cache: dict) -> None:
        storage.write_json(self.hash_cache_path, cache)

    def mark_running(self, step: str, key: str, **extra) -> None:
        """The step started here (pid/host) or as a Ray Job (`job_id`); removed when it ends."""
        storage.write_json(self.dir / f"{step}.running.json", {"step": step, "key": key, "host": socket.gethostname(),
                                                               "pid": os.getpid(), "started": time.time(), **extra})

    def clear_running(self, step: str) -> None:
        storage.delete(self.dir / f"{step}.running.json")

    def running(self, step: str, key: str) -> dict | None:
        """The running marker for this key, unless it names a process on this host that is gone."""
        p = self.dir / f"{step}.running.json"
        try:
            r = storage.read_json(p)
        except (OSError, ValueError):
            return None
        if r["key"] != key:
            return None
        if r["host"] == socket.gethostname() and not _alive(r["pid"]):
            return None
        return r

    def write(self, step: str, key: str, outputs: list[Path], metrics: dict, started: float, **extra) -> dict:
        receipt = {
            "step": step, "key": key, "outputs": [str(o) for o in outputs], "metrics": metrics,
            "started": started, "finished": time.time(), "seconds": round(time.time() - started, 3), **extra,
        }
        storage.write_json(self.path(step), receipt)
        storage.delete(self.dir / f"{step}.failed.json")
        return receipt

    def write_failure(self, step: str, key: str, error: str, **extra) -> None:
        storage.write_json(self.dir / f"{step}.failed.json", {"step": step, "key": key, "error": error,
                                                             "time": time.time(), **extra})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
