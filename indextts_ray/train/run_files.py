"""A run's side files when `run.output_dir` is on an object store: written locally, uploaded at checkpoints.

Ray Train uploads the checkpoints (`step-*`, its snapshot) itself. Everything else a run writes (metrics.jsonl,
events.jsonl, TensorBoard and wandb files, parameters.json, best/, finished.json, audits) is appended to or
rewritten in place, which an object store cannot do: each rank writes into a mirror folder on its node and
uploads what changed after every checkpoint and at the end, so the store holds the files as of the last
checkpoint, which is where a resumed run continues from. A rank 0 that starts on another node first fetches
the appended files (metrics, events) so it appends to the run's history, not to an empty file.

A local run dir is its own mirror: nothing is copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from indextts_ray import storage

APPENDED = ("metrics.jsonl", "events.jsonl")  # continued across restarts: fetched by a new rank 0
NODE_ONLY = ("workers",)  # pid files: meaningful on their node only
LAST = ("checksums.json", "gpt.pth", "finished.json")  # completion markers: uploaded after the files they vouch for


def local_dir(run_loc: str | Path) -> Path:
    """Where the run's side files are written on this node: the run dir itself, or its mirror folder."""
    if not storage.is_remote(run_loc):
        return Path(run_loc)
    digest = hashlib.sha256(str(run_loc).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "indextts-ray-runs" / digest / storage.name(run_loc)


class RunMirror:
    """Uploads the files this rank wrote into `local_dir(run_loc)` (rank 0: all but pid files; rank r > 0: its
    own `rank<r>` files) when they changed since the last push."""

    def __init__(self, run_loc: str | Path, rank: int):
        self.remote = str(run_loc) if storage.is_remote(run_loc) else None
        self.dir = local_dir(run_loc)
        self.rank = rank
        self._pushed: dict[str, tuple[int, int]] = {}

    def pull(self) -> None:
        """Rank 0 on a fresh node: continue the store's appended files."""
        if self.remote is None or self.rank != 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in APPENDED:
            loc = storage.join(self.remote, name)
            if storage.is_file(loc):
                storage.download(loc, self.dir / name)

    def push(self) -> int:
        """Upload what changed; returns the number of files uploaded."""
        if self.remote is None or not self.dir.is_dir():
            return 0
        changed = []
        for p in sorted(self.dir.rglob("*")):
            rel = p.relative_to(self.dir).as_posix()
            if not p.is_file() or rel.split("/")[0] in NODE_ONLY or "/." in f"/{rel}" or not self._mine(rel):
                continue  # hidden = temp files of atomic writes in progress
            st = p.stat()
            if self._pushed.get(rel) != (st.st_size, st.st_mtime_ns):
                changed.append((rel, p, (st.st_size, st.st_mtime_ns)))
        changed.sort(key=lambda c: Path(c[0]).name in LAST)
        for rel, p, stamp in changed:
            storage.upload_file(p, storage.join(self.remote, rel))
            self._pushed[rel] = stamp
        return len(changed)

    def _mine(self, rel: str) -> bool:
        return self.rank == 0 or f"rank{self.rank}" in Path(rel).name


@contextlib.contextmanager
def checkpoint_files(checkpoint) -> Iterator[Path]:
    """A local folder with a `ray.train.Checkpoint`'s files. One on a store is downloaded into a folder of this
    process's own: Ray's `as_directory` shares one folder per checkpoint between the ranks of a node, and a rank
    that arrives after the first download has ended downloads again into it, truncating files another rank is
    reading (a resume from S3 failed with "PytorchStreamReader failed reading file")."""
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="indextts-checkpoint-") as d:
        checkpoint.to_directory(d)
        yield Path(d)
