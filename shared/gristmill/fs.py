"""Files over fsspec: expanding user paths into files, and writing files atomically.

Local paths and any fsspec URL (`s3://`, `memory://`, ...) work alike. Nothing here knows about
tasks or stages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from gristmill.errors import GristmillError

__all__ = [
    "atomic_write",
    "exists",
    "expand_paths",
    "file_size",
    "join",
    "list_files",
    "read_bytes",
    "read_range",
    "remove_file",
    "remove_tree",
    "tree_size",
    "write_once",
    "write_private",
]

_GLOB_CHARS = set("*?[")


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, stripped = fsspec.core.url_to_fs(path)
    return fs, stripped


def _name(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path as users see it: plain for local files, with its protocol otherwise."""
    if isinstance(fs, LocalFileSystem):
        return str(path)
    return str(fs.unstrip_protocol(path))


def expand_paths(paths: str | Iterable[str], extensions: Iterable[str], what: str) -> list[str]:
    """Every file named by `paths` (files, directories searched recursively, globs), sorted.

    Directory and glob matches keep only names ending in one of `extensions`, and a directory's
    hidden entries (a name under it starting with "." or "_", such as a dataset's `_lineage/`)
    are left out; a file named explicitly is taken whatever its name. A path that matches
    nothing is an error naming it.
    """
    endings = tuple(extensions)
    found: set[str] = set()
    for raw in [paths] if isinstance(paths, str) else list(paths):
        fs, path = _fs(str(raw))
        if _GLOB_CHARS & set(path):
            matches = [p for p in fs.glob(path) if fs.isfile(p)]
            matches = [p for p in matches if p.endswith(endings)]
        elif fs.isdir(path):
            matches = [p for p in fs.find(path) if p.endswith(endings) and not _hidden(path, p)]
        elif fs.isfile(path):
            matches = [path]
        else:
            raise GristmillError(f"{what}: no such file or directory: {raw}")
        if not matches:
            raise GristmillError(f"{what}: no files ending in {', '.join(endings)} under {raw}")
        found.update(_name(fs, p) for p in matches)
    return sorted(found)


def _hidden(root: str, path: str) -> bool:
    """Whether a name of `path` below directory `root` starts with "." or "_"."""
    below = path[len(root.rstrip("/")) :].strip("/")
    return any(part[:1] in "._" for part in below.split("/") if part)


def list_files(
    paths: Iterable[str], extensions: Iterable[str]
) -> dict[str, tuple[int, float, str]]:
    """What `expand_paths` would find, with each file's (size, modification time, etag or "");
    a path that matches nothing yet gives nothing (a watched input may start empty)."""
    endings = tuple(extensions)
    found: dict[str, tuple[int, float, str]] = {}
    for raw in paths:
        fs, path = _fs(str(raw))
        if _GLOB_CHARS & set(path):
            infos = {p: fs.info(p) for p in fs.glob(path)}
        elif fs.isdir(path):
            infos = {p: i for p, i in fs.find(path, detail=True).items() if not _hidden(path, p)}
        elif fs.exists(path):
            infos = {path: fs.info(path)}
        else:
            continue
        explicit = not (_GLOB_CHARS & set(path)) and not fs.isdir(path)
        for name, info in infos.items():
            if info.get("type") != "file" or not (explicit or name.endswith(endings)):
                continue
            mtime = info.get("mtime", info.get("LastModified", info.get("created", 0.0)))
            stamp = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime or 0.0)
            etag = str(info.get("ETag", info.get("etag", "")) or "")
            found[_name(fs, name)] = (int(info.get("size") or 0), stamp, etag)
    return found


def file_size(path: str) -> int:
    """The size of a file in bytes."""
    fs, stripped = _fs(path)
    return int(fs.size(stripped))


def _local(path: str) -> str | None:
    """The plain path of a local file (no scheme, or file://), else None: the fast path that
    skips fsspec for the many small files the service stores."""
    if path.startswith("file://"):
        return path[len("file://") :]
    return None if "://" in path or "::" in path else path


_MADE_DIRS: set[str] = set()


def read_bytes(path: str) -> bytes:
    """The whole content of a file."""
    local = _local(path)
    if local is not None:
        with open(local, "rb") as handle:
            return handle.read()
    fs, stripped = _fs(path)
    data: bytes = fs.cat_file(stripped)
    return data


def read_range(path: str, offset: int, length: int) -> bytes:
    """`length` bytes of a file from `offset` (fewer when the file is shorter)."""
    local = _local(path)
    if local is not None:
        with open(local, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    fs, stripped = _fs(path)
    data: bytes = fs.cat_file(stripped, start=offset, end=offset + length)
    return data


def remove_file(path: str) -> bool:
    """Remove one file; False when there was none."""
    local = _local(path)
    if local is not None:
        try:
            os.remove(local)
        except FileNotFoundError:
            return False
        return True
    fs, stripped = _fs(path)
    if not fs.exists(stripped):
        return False
    fs.rm_file(stripped)
    return True


def remove_tree(path: str) -> bool:
    """Remove a directory and everything under it; False when there was nothing."""
    local = _local(path)
    if local is not None:
        if not os.path.isdir(local):
            return False
        shutil.rmtree(local)
        return True
    fs, stripped = _fs(path)
    if not fs.exists(stripped):
        return False
    fs.rm(stripped, recursive=True)
    return True


def tree_size(path: str) -> int:
    """The bytes of every file under a directory (0 when there is none)."""
    local = _local(path)
    if local is not None:
        total = 0
        for root, _, files in os.walk(local):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # one removed while we walk
                    total += os.stat(os.path.join(root, name)).st_size
        return total
    fs, stripped = _fs(path)
    if not fs.exists(stripped):
        return 0
    return int(fs.du(stripped, total=True))


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write a local file only its owner may read (mode 0600), whole or not at all (through a
    temporary name and a rename): credentials, and what holds their hashes."""
    target = os.fspath(path)
    temporary = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.replace(temporary, target)


def join(directory: str, name: str) -> str:
    """`directory/name` for local paths and URLs alike."""
    return directory.rstrip("/") + "/" + name


def exists(path: str) -> bool:
    """Whether a file exists at `path`."""
    fs, stripped = _fs(path)
    return bool(fs.exists(stripped))


def write_once(path: str, payload: bytes, fail_half_way: bool = False) -> bytes:
    """Write `payload` to `path` unless a file is there already; return the bytes the file
    holds afterwards (the first writer's). Locally the first writer wins atomically (a hard
    link to a complete temporary file); elsewhere a file found existing is kept, and a race
    between two writers is harmless only when both write the same bytes (content-addressed
    names, as the task store uses). `fail_half_way` (fault injection) writes half the bytes
    and raises, as a write cut short would."""
    target = _local(path)
    if target is None:
        fs, stripped = _fs(path)
        if fs.exists(stripped):
            return bytes(fs.cat_file(stripped))
        with atomic_write(path) as handle:
            handle.write(payload[: len(payload) // 2] if fail_half_way else payload)
            if fail_half_way:
                raise OSError(f"writing {path} failed half way (injected fault)")
        return payload
    parent = os.path.dirname(target) or "."
    if parent not in _MADE_DIRS:
        os.makedirs(parent, exist_ok=True)
        _MADE_DIRS.add(parent)
    temporary = os.path.join(parent, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload[: len(payload) // 2] if fail_half_way else payload)
        if fail_half_way:
            raise OSError(f"writing {path} failed half way (injected fault)")
        try:
            os.link(temporary, target)
        except FileExistsError:
            with open(target, "rb") as existing:
                return existing.read()
        return payload
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """Open `path` for writing so that readers see the old file or the whole new one, never a
    part, and a write that fails leaves nothing. On an object store (S3, GCS, Azure) an object
    appears whole when its upload completes, so the write goes straight to `path` and a failure
    aborts the upload. Elsewhere a temporary sibling is written, then renamed over `path`, and
    removed if writing fails."""
    fs, target = _fs(path)
    if _publishes_whole_objects(fs):
        handle = fs.open(target, "wb")
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(Exception):
                handle.discard()  # abort a multipart upload already begun
            handle.closed = True  # and never complete the part written
            raise
        handle.close()
        return
    parent = target.rsplit("/", 1)[0] if "/" in target else "."
    fs.makedirs(parent, exist_ok=True)
    temporary = f"{parent}/.{target.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(temporary, "wb") as handle:
            yield handle
        if isinstance(fs, LocalFileSystem):
            os.replace(temporary, target)
        else:
            fs.mv(temporary, target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(temporary)
        raise


# Object stores: an object becomes visible only once its whole upload completes.
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def _publishes_whole_objects(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return any(p in _OBJECT_STORES for p in protocols)
