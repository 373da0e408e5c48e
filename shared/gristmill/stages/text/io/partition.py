"""`FilePartitioningStage`: turns input paths into `FileGroupTask`s, the reading stage's work."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gristmill import fs
from gristmill.stages.base import ProcessingStage
from gristmill.tasks import EmptyTask, FileGroupTask, content_task_id

__all__ = ["FilePartitioningStage", "parse_size", "partition_files"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "128MB", "1.5 GiB", "4096"."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", size)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"not a size: {size!r} (try e.g. 134217728 or '128MB')")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"a size must be positive, got {size!r}")
    return value


def partition_files(
    files: list[str],
    sizes: list[int] | None = None,
    files_per_partition: int | None = None,
    blocksize: int | None = None,
) -> list[list[str]]:
    """Group `files` (kept in order) into partitions. Pure.

    `files_per_partition` makes groups of that many files; `blocksize` adds files to a group
    until it holds at least `blocksize` bytes (a file larger than that is a group of its own);
    with neither, every file is its own group.
    """
    if files_per_partition is not None and blocksize is not None:
        raise ValueError("give files_per_partition or blocksize, not both")
    if files_per_partition is not None:
        if files_per_partition < 1:
            raise ValueError(f"files_per_partition must be >= 1, got {files_per_partition}")
        step = files_per_partition
        return [files[i : i + step] for i in range(0, len(files), step)]
    if blocksize is None:
        return [[f] for f in files]
    if sizes is None or len(sizes) != len(files):
        raise ValueError("partitioning by blocksize needs one size per file")
    groups: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for path, size in zip(files, sizes, strict=True):
        current.append(path)
        filled += size
        if filled >= blocksize:
            groups.append(current)
            current, filled = [], 0
    if current:
        groups.append(current)
    return groups


class FilePartitioningStage(ProcessingStage[EmptyTask, FileGroupTask]):
    """Finds the input files (paths, directories, globs, fsspec URLs) and groups them.

    Each group's task id comes from its paths, so the same inputs always give the same tasks.
    `limit` keeps only the first groups (for a quick look at a big dataset).
    """

    name = "file_partitioning"

    def __init__(
        self,
        file_paths: str | list[str],
        files_per_partition: int | None = None,
        blocksize: int | str | None = None,
        file_extensions: list[str] | None = None,
        limit: int | None = None,
        dataset_name: str = "",
    ):
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.blocksize = blocksize
        self.file_extensions = file_extensions
        self.limit = limit
        self.dataset_name = dataset_name
        if files_per_partition is not None and blocksize is not None:
            raise ValueError("give files_per_partition or blocksize, not both")
        if blocksize is not None:
            parse_size(blocksize)

    def process(self, task: EmptyTask) -> list[FileGroupTask]:
        """One `FileGroupTask` per group of input files."""
        files = fs.expand_paths(self.file_paths, self.file_extensions or [""], self.name)
        blocksize = parse_size(self.blocksize) if self.blocksize is not None else None
        sizes = [fs.file_size(f) for f in files] if blocksize is not None else None
        groups = partition_files(files, sizes, self.files_per_partition, blocksize)
        if self.limit is not None:
            groups = groups[: self.limit]
        return [
            FileGroupTask(
                task_id=content_task_id(*group),
                dataset_name=self.dataset_name or _dataset_name(self.file_paths),
                data=group,
            )
            for group in groups
        ]


def _dataset_name(paths: str | Iterable[str]) -> str:
    first = paths if isinstance(paths, str) else next(iter(paths), "")
    return first.rstrip("/").rsplit("/", 1)[-1]
