"""Where outputs live: a local path or an object-store URI, and the few file operations the project needs.

    data.output_dir, train.data_dir, run.output_dir, pipeline.work_dir, export targets:
        /abs/path, rel/path, file:///abs  -> the local disk, as before: memory-mapped reads, temp file + rename
        s3://bucket/prefix                -> pyarrow S3FileSystem; endpoint from AWS_ENDPOINT_URL_S3 or
                                             AWS_ENDPOINT_URL (MinIO, Ceph, moto: scheme included, e.g.
                                             http://10.0.0.5:9000), region from AWS_REGION/AWS_DEFAULT_REGION,
                                             credentials from the AWS chain (env keys, AWS_PROFILE, instance role)
        gs://bucket/prefix                -> pyarrow GcsFileSystem (application default credentials)

Atomic writes: locally a temp file in the same folder, then rename (`io_utils`). On an object store an object
is immutable and a PUT is atomic: it appears whole when its upload completes (a multipart upload on
CompleteMultipartUpload) or not at all. So a remote atomic write is one upload of a finished local temp file:
no temp key, no copy. A folder has no such swap; multi-file outputs upload their completion marker last
(a checkpoint's checksums.json, an export's gpt.pth, a dataset's dataset.json) and readers look for it.

Credentials never go into a URI (refused: a URI reaches logs, receipts and resolved configs); every process
that touches the store reads them from its environment: the driver, and Ray workers, which inherit the
environment of the `ray start` that started their node (`cluster.yaml` exports it).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from indextts_ray.errors import UserError

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
Location = str | os.PathLike  # a local path or a remote URI


class StorageError(UserError):
    """A location that cannot be used (scheme, credentials, unreachable store): one line naming key and fix."""


def scheme(loc: Location) -> str | None:
    m = _SCHEME.match(str(loc)) if isinstance(loc, str) else None
    return m.group(1).lower() if m else None


def is_remote(loc: Location | None) -> bool:
    return loc is not None and scheme(loc) in REMOTE_SCHEMES


def check(loc: Location, key: str) -> None:
    """Refuse an unsupported scheme or credentials in the URI, naming the config key."""
    s = scheme(loc)
    if s is None or s == "file":
        return
    if s not in REMOTE_SCHEMES:
        raise StorageError(f"{key}={loc}: unsupported scheme {s}://; use a local path, s3://bucket/prefix or "
                           "gs://bucket/prefix")
    if "@" in str(loc).split("://", 1)[1].split("/", 1)[0]:
        raise StorageError(f"{key}: credentials in the URI are refused (they would be logged); give "
                           f"{s}://bucket/prefix and put the keys in the environment (AWS_ACCESS_KEY_ID/"
                           "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or GOOGLE_APPLICATION_CREDENTIALS)")


def normalize(loc: Location, base: Path | None = None) -> str:
    """An absolute location: URIs as they are (no trailing slash), `file://` and relative paths as absolute paths."""
    s = scheme(loc)
    if s in REMOTE_SCHEMES:
        return str(loc).rstrip("/")
    text = str(loc)[len("file://"):] if s == "file" else os.fspath(loc)
    p = Path(text)
    return str(p if p.is_absolute() else ((base or Path.cwd()) / p).resolve())


class URI(str):
    """A remote location that joins like a `Path` (`uri / "train"`): for code that builds paths with `/`."""

    def __truediv__(self, part: str) -> URI:
        return URI(join(self, part))

    @property
    def name(self) -> str:
        return name(self)

    @property
    def parent(self) -> URI:
        return URI(parent(self))


def location(loc: Location) -> Path | URI:
    """A `Path` (absolute) for a local location, a `URI` for a remote one: both join with `/`."""
    return URI(normalize(loc)) if is_remote(loc) else Path(normalize(loc))


def pathlike(loc: Location) -> Path | URI:
    """`loc` as given, as a `Path` or a `URI` (for code that joins with `/`)."""
    return URI(str(loc)) if is_remote(loc) else Path(loc)


def join(loc: Location, *parts: str) -> str:
    """`loc/part/...` for a path or a URI (URIs keep their `//`, which `Path` would collapse)."""
    if is_remote(loc):
        return posixpath.join(str(loc).rstrip("/"), *parts)
    return os.path.join(os.fspath(loc), *parts)


def name(loc: Location) -> str:
    return posixpath.basename(str(loc).rstrip("/"))


def parent(loc: Location) -> str:
    return posixpath.dirname(str(loc).rstrip("/")) if is_remote(loc) else str(Path(loc).parent)


# ----------------------------------------------------------------------------- filesystems


def resolve(loc: Location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it): the local filesystem with an absolute path, or the store of a URI."""
    if not is_remote(loc):
        return pafs.LocalFileSystem(), normalize(loc)
    s, rest = str(loc).split("://", 1)
    check(loc, "path")
    bucket = rest.split("/", 1)[0]
    if s.lower() == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        fs = _s3(endpoint, region or ("us-east-1" if endpoint else _bucket_region(bucket)))
    else:
        fs = _gcs(os.environ.get("STORAGE_EMULATOR_HOST"))
    return fs, rest.rstrip("/")


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str) -> pafs.FileSystem:
    # a custom endpoint (MinIO, Ceph, moto) has no instance role: the keys must be in the environment
    if endpoint and not _aws_credentials_configured():
        raise StorageError(f"S3 endpoint {endpoint} (AWS_ENDPOINT_URL): no credentials; export AWS_ACCESS_KEY_ID "
                           "and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) on this machine and on every Ray node")
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region)


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError as e:
        raise StorageError(f"s3://{bucket}: cannot find the bucket's region ({_first_line(e)}); set AWS_REGION, or "
                           "AWS_ENDPOINT_URL for an S3-compatible server") from None


@functools.lru_cache(maxsize=4)
def _gcs(emulator: str | None) -> pafs.FileSystem:
    if emulator:
        host = emulator.split("://", 1)[-1]
        return pafs.GcsFileSystem(endpoint_override=host, scheme="http", anonymous=True)
    return pafs.GcsFileSystem()


def _aws_credentials_configured() -> bool:
    if any(os.environ.get(v) for v in CREDENTIAL_VARS):
        return True
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), os.environ.get(
        "AWS_CONFIG_FILE", "~/.aws/config")]
    return any(Path(f).expanduser().is_file() for f in files)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_reachable(loc: Location, key: str) -> None:
    """Fail early, naming `key`, when a remote location's store cannot be reached or its bucket is missing."""
    check(loc, key)
    if not is_remote(loc):
        return
    try:
        fs, path = resolve(loc)
        bucket = path.split("/", 1)[0]
        found = fs.get_file_info(bucket).type
    except StorageError as e:
        raise StorageError(f"{key}={loc}: {e}") from None
    except OSError as e:
        raise StorageError(f"{key}={loc}: cannot reach the object store ({_first_line(e)}); check AWS_ENDPOINT_URL "
                           "and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)") from None
    if found == pafs.FileType.NotFound:
        raise StorageError(f"{key}={loc}: bucket {bucket} does not exist; create it first")


# ----------------------------------------------------------------------------- reads


def info(loc: Location) -> pafs.FileInfo:
    fs, path = resolve(loc)
    return fs.get_file_info(path)


def exists(loc: Location) -> bool:
    if not is_remote(loc):
        return Path(normalize(loc)).exists()
    return info(loc).type != pafs.FileType.NotFound


def is_file(loc: Location) -> bool:
    if not is_remote(loc):
        return Path(normalize(loc)).is_file()
    return info(loc).type == pafs.FileType.File


def size(loc: Location) -> int:
    if not is_remote(loc):
        return Path(normalize(loc)).stat().st_size
    return int(info(loc).size)


def read_bytes(loc: Location) -> bytes:
    if not is_remote(loc):
        return Path(normalize(loc)).read_bytes()
    fs, path = resolve(loc)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(loc: Location) -> str:
    return read_bytes(loc).decode("utf-8")


def read_json(loc: Location):
    return json.loads(read_bytes(loc))


def open_input_file(loc: Location) -> pa.NativeFile:
    """A random-access file: memory-mapped locally; ranged reads (one GET per read) on a store."""
    if not is_remote(loc):
        return pa.memory_map(normalize(loc), "r")
    fs, path = resolve(loc)
    return fs.open_input_file(path)


def glob(folder: Location, pattern: str, recursive: bool = False) -> list[str]:
    """Sorted files in `folder` whose name matches `pattern` (`*`, `?`); URIs for a URI folder."""
    if not is_remote(folder):
        p = Path(normalize(folder))
        return sorted(str(f) for f in (p.rglob(pattern) if recursive else p.glob(pattern)) if f.is_file())
    fs, path = resolve(folder)
    prefix = str(folder).split("://", 1)[0] + "://"
    found = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    return sorted(prefix + f.path for f in found
                  if f.type == pafs.FileType.File and fnmatch.fnmatchcase(f.base_name, pattern))


def listdir(folder: Location) -> list[str]:
    """Names of the entries (files and folders) directly in `folder`; empty when it does not exist."""
    if not is_remote(folder):
        p = Path(normalize(folder))
        return sorted(f.name for f in p.iterdir()) if p.is_dir() else []
    fs, path = resolve(folder)
    return sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


# ----------------------------------------------------------------------------- writes


def makedirs(loc: Location) -> None:
    """Locally a folder; on a store nothing (keys need no folders)."""
    if not is_remote(loc):
        Path(normalize(loc)).mkdir(parents=True, exist_ok=True)


def atomic_write(loc: Location, write: Callable[[str], None]) -> str:
    """`write(local_tmp_path)`, then publish it whole at `loc`: rename locally, one upload on a store."""
    from indextts_ray.io_utils import atomic_write as local_atomic_write

    if not is_remote(loc):
        return str(local_atomic_write(normalize(loc), write))
    with tempfile.TemporaryDirectory(prefix="indextts-upload-") as tmp:
        f = os.path.join(tmp, name(loc))
        write(f)
        upload_file(f, loc)
    return str(loc)


def write_bytes(loc: Location, data: bytes) -> str:
    from indextts_ray.io_utils import atomic_write_bytes

    if not is_remote(loc):
        return str(atomic_write_bytes(normalize(loc), data))
    fs, path = resolve(loc)
    with fs.open_output_stream(path) as f:  # one PUT: the object appears whole or not at all
        f.write(data)
    return str(loc)


def write_text(loc: Location, text: str) -> str:
    return write_bytes(loc, text.encode("utf-8"))


def write_json(loc: Location, obj) -> str:
    return write_text(loc, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def upload_file(local: str | os.PathLike, loc: Location) -> None:
    fs, path = resolve(loc)
    pafs.copy_files(os.fspath(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def upload_dir(local: str | os.PathLike, loc: Location, last: tuple[str, ...] = ()) -> None:
    """Every file under `local` to `loc/<relative path>`; the files named in `last` after all others (markers)."""
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name in last)
    for p in files:
        upload_file(p, join(loc, p.relative_to(local).as_posix()))


def download(loc: Location, local: str | os.PathLike) -> Path:
    """A file or a folder (recursively) from `loc` to `local`."""
    fs, path = resolve(loc)
    local = Path(local)
    if fs.get_file_info(path).type == pafs.FileType.File:
        local.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return local
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if f.type == pafs.FileType.File:
            download(f"{scheme(loc)}://{f.path}", local / posixpath.relpath(f.path, path))
    return local


def delete(loc: Location) -> None:
    """A file or a folder tree; nothing when absent."""
    if not is_remote(loc):
        p = Path(normalize(loc))
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        return
    fs, path = resolve(loc)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.delete_file(path)
    elif kind == pafs.FileType.Directory:
        fs.delete_dir(path)


def copy_tree(src: Location, dst: Location, last: tuple[str, ...] = ()) -> str:
    """Replace `dst` by a copy of `src` (either may be remote). Locally the copy is swapped in whole; on a store
    the old objects go first and the files named in `last` (completion markers) are written last."""
    with local_copy(src) as here:
        publish_dir(here, dst, last)
    return str(dst)


def publish_dir(local: str | os.PathLike, dst: Location, last: tuple[str, ...] = ()) -> str:
    """Replace `dst` by the finished local folder `local` (a local `dst`: whole-folder swap)."""
    if not is_remote(dst):
        return str(swap_local_dir(Path(local), Path(normalize(dst))))
    delete(dst)
    upload_dir(local, dst, last)
    return str(dst)


def swap_local_dir(src: Path, dst: Path) -> Path:
    """Replace local `dst` by a copy of `src` (copied beside it first, so a crash never leaves half a folder)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


@contextlib.contextmanager
def local_copy(loc: Location) -> Iterator[Path]:
    """A local path to read `loc` from: the path itself, or a temporary download of a remote file/folder."""
    if not is_remote(loc):
        yield Path(normalize(loc))
        return
    with tempfile.TemporaryDirectory(prefix="indextts-download-") as tmp:
        yield download(loc, Path(tmp) / (name(loc) or "object"))


def tree_stamp(loc: Location) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under a remote folder, sorted: changes when any file does."""
    fs, path = resolve(loc)
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((posixpath.relpath(f.path, path), int(f.size), int(f.mtime_ns or 0))
                  for f in found if f.type == pafs.FileType.File)


def cached_copy(loc: Location) -> Path:
    """A local path of `loc` kept for this process's lifetime in the temp dir (tokenizer, codebook, init
    checkpoint: read by name many times); refetched when the object's size or time changed."""
    if not is_remote(loc):
        return Path(normalize(loc))
    i = info(loc)
    if i.type == pafs.FileType.NotFound:
        raise FileNotFoundError(str(loc))
    stamp = f"{loc}|{i.size}|{i.mtime_ns}" if i.type == pafs.FileType.File else f"{loc}|{tree_stamp(loc)}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:20]
    dest = Path(tempfile.gettempdir()) / "indextts-ray-cache" / key / (name(loc) or "object")
    if not dest.exists():
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        download(loc, tmp)
        with contextlib.suppress(OSError):  # another process placed it first: same content
            tmp.rename(dest)
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def _staged(loc: Location, publish) -> Iterator[Path]:
    """`loc` itself when local; else a temp path named like it, handed to `publish(local, loc)` when the `with`
    body succeeds."""
    if not is_remote(loc):
        yield Path(normalize(loc))
        return
    with tempfile.TemporaryDirectory(prefix="indextts-stage-") as tmp:
        local = Path(tmp) / name(loc)
        yield local
        publish(local, loc)


def staged_file(loc: Location):
    """A local path to write `loc` through: the path itself (the writer must be atomic), or a temp file that is
    uploaded (one PUT) when the `with` body succeeds."""
    return _staged(loc, upload_file)


def staged_dir(loc: Location, last: tuple[str, ...] = ()):
    """A local folder to write `loc` through: the folder itself, or a temp folder that replaces the remote one
    (files named in `last` uploaded last) when the `with` body succeeds."""
    return _staged(loc, lambda local, dest: publish_dir(local, dest, last))


def sha256(loc: Location, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    fs, path = resolve(loc)
    with fs.open_input_stream(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
