"""What every reader shares: decompression, the reading stage's base, and drop records for
skipped input."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pyarrow as pa

from gristmill import fs
from gristmill.errors import DataFormatError
from gristmill.stages.base import CompositeStage, ProcessingStage
from gristmill.stages.text.io.partition import FilePartitioningStage
from gristmill.tasks import DocumentBatch, EmptyTask, FileGroupTask, record_drops

__all__ = ["FileReader", "OnError", "ReaderStage", "read_decompressed"]

OnError = Literal["raise", "skip"]

_CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}


def read_decompressed(path: str) -> bytes:
    """The bytes of `path`, decompressed when its name ends in .gz, .zst/.zstd or .bz2."""
    raw = fs.read_bytes(path)
    for ending, codec in _CODECS.items():
        if path.endswith(ending):
            try:
                return bytes(pa.CompressedInputStream(pa.BufferReader(raw), codec).read())
            except (OSError, pa.ArrowException) as exc:
                raise DataFormatError(f"{path}: cannot decompress ({codec}): {exc}") from exc
    return raw


class ReaderStage(ProcessingStage[FileGroupTask, DocumentBatch]):
    """Reads the files of a `FileGroupTask` into one `DocumentBatch`, in file order.

    `fields` keeps only those columns (each must exist). `text_field` must be present in every
    document and hold a string; set it to None to read data without a text column. With
    `on_error="raise"` (the default) bad input stops the run with an error naming the stage,
    file and line; with `on_error="skip"` the bad line is left out and recorded as a dropped
    document with id `FILE:LINE` and the reason, so nothing vanishes unexplained.
    """

    def __init__(
        self,
        fields: list[str] | None = None,
        text_field: str | None = "text",
        on_error: OnError = "raise",
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.fields = fields
        self.text_field = text_field
        self.on_error = on_error

    def outputs(self) -> tuple[list[str], list[str]]:
        """The columns requested; without `fields`, the text column and whatever the files hold
        ("*")."""
        if self.fields:
            return [], list(self.fields)
        return [], [self.text_field, "*"] if self.text_field else ["*"]

    def read_file(self, path: str, skipped: list[tuple[str, str]]) -> pa.Table | None:
        """One file as a table (None when it holds no documents); append (id, reason) of each
        skipped line to `skipped`."""
        raise NotImplementedError

    def process(self, task: FileGroupTask) -> DocumentBatch:
        """Read every file of the group; skipped lines become drop records."""
        skipped: list[tuple[str, str]] = []
        tables = [t for path in task.data if (t := self.read_file(path, skipped)) is not None]
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
        else:
            table = pa.table(
                {self.text_field: pa.array([], pa.string())} if self.text_field else {}
            )
        batch = DocumentBatch(
            dataset_name=task.dataset_name,
            data=table,
            _metadata={"source_files": list(task.data)},
        )
        for doc_id, reason in skipped:
            record_drops(batch, self.name, [doc_id], reason)
        return batch

    def fail(self, where: str, problem: str) -> DataFormatError:
        """The error for bad input at `where` (FILE or FILE:LINE)."""
        return DataFormatError(f"{self.name}: {where}: {problem}")

    def check_fields(self, path: str, present: list[str]) -> None:
        """Raise unless every requested field (and the text field) is a column of the file."""
        wanted = list(self.fields or [])
        if self.text_field and self.text_field not in wanted:
            wanted.append(self.text_field)
        missing = [f for f in wanted if f not in present]
        if missing:
            raise self.fail(
                path,
                f"no column {', '.join(repr(m) for m in missing)} "
                f"(it has: {', '.join(repr(p) for p in present)})",
            )

    def select(self, table: pa.Table) -> pa.Table:
        """Only the requested fields, in the requested order."""
        return table.select(self.fields) if self.fields else table


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class FileReader(CompositeStage[EmptyTask, DocumentBatch]):
    """Reads files: partitions the inputs (`FilePartitioningStage`), then reads each group with
    the subclass's `reader_stage`.

    `file_paths` takes files, directories (searched for the format's extensions, plain or
    compressed), globs and fsspec URLs. `files_per_partition` or `blocksize` (bytes, or e.g.
    "256MB") sizes the groups; by default each file is one task. `fields`, `text_field` and
    `on_error` are the reading stage's (see `ReaderStage`).
    """

    extensions: ClassVar[list[str]] = []
    reader_stage: ClassVar[type[ReaderStage]] = ReaderStage

    def __init__(
        self,
        file_paths: str | list[str],
        files_per_partition: int | None = None,
        blocksize: int | str | None = None,
        fields: list[str] | None = None,
        text_field: str | None = "text",
        on_error: OnError = "raise",
        file_extensions: list[str] | None = None,
        limit: int | None = None,
        dataset_name: str = "",
    ):
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.blocksize = blocksize
        self.fields = fields
        self.text_field = text_field
        self.on_error = on_error
        self.file_extensions = file_extensions
        self.limit = limit
        self.dataset_name = dataset_name
        self.decompose()  # check the parameters now, not at build time

    def decompose(self) -> list[ProcessingStage[Any, Any]]:
        """File partitioning, then reading."""
        return [
            FilePartitioningStage(
                self.file_paths,
                files_per_partition=self.files_per_partition,
                blocksize=self.blocksize,
                file_extensions=self.file_extensions or self.extensions,
                limit=self.limit,
                dataset_name=self.dataset_name,
            ),
            self.reader_stage(
                fields=self.fields, text_field=self.text_field, on_error=self.on_error
            ),
        ]

    def outputs(self) -> tuple[list[str], list[str]]:
        """What the reading stage writes."""
        return self.decompose()[-1].outputs()
