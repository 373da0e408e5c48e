"""Tasks as bytes: a small JSON header, then the data as an Arrow IPC stream. Never pickle.

Layout: MAGIC (8 bytes) | header length (uint32, little-endian) | header (UTF-8 JSON) | Arrow IPC.
Several tasks may share one payload (`encode_tasks`): MULTI_MAGIC | length | {"tasks": [header,
...]} | one Arrow IPC stream holding every task's rows, each header naming its [start, count].
Tabular data (pyarrow.Table, pandas.DataFrame) travels as Arrow; other data must be JSON-safe.
Extra dataclass fields of a Task subclass travel in the header and must be JSON-safe too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from gristmill.errors import TaskSerializationError
from gristmill.tasks.perf import StagePerfStats
from gristmill.tasks.registry import task_type, task_type_name

if TYPE_CHECKING:
    from gristmill.tasks.base import Task

__all__ = ["SCHEMA_VERSION", "TaskPayload", "decode_task", "encode_task", "encode_tasks"]

MAGIC = b"GMTASK\x00\x00"
MULTI_MAGIC = b"GMTASKS\x00"
SCHEMA_VERSION = 1
_LENGTH = struct.Struct("<I")
_BASE_FIELDS = {"task_id", "dataset_name", "data", "_stage_perf", "_metadata"}


def _native(value: Any) -> bool:
    """Whether `value` is made only of what JSON carries unchanged (the common case, checked
    without encoding: tasks are encoded by the thousand on the service's hot path)."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_native(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _native(v) for k, v in value.items())
    return False


def _json_safe(value: Any, what: str, cls_name: str) -> Any:
    """`value` if JSON carries it unchanged; otherwise a `TaskSerializationError` naming it."""
    if _native(value):
        return value
    try:
        same = json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError) as exc:
        raise TaskSerializationError(
            f"{cls_name}: {what} is not JSON-serialisable ({exc})"
        ) from exc
    if not same:  # e.g. non-string keys or tuples, which JSON would silently turn into others
        raise TaskSerializationError(
            f"{cls_name}: {what} would change in JSON (use string keys and lists, not tuples)"
        )
    return value


def _perf(task: Task[Any], cls_name: str) -> list[dict[str, Any]]:
    """The task's perf entries as dicts: typed fields, so only user metrics need checking."""
    entries = [p.to_dict() for p in task._stage_perf]
    for entry in entries:
        if entry["custom_metrics"] or not isinstance(entry["stage_name"], str):
            _json_safe(entry, "_stage_perf", cls_name)
    return entries


def _header(task: Task[Any]) -> tuple[dict[str, Any], pa.Table | None]:
    """A task's JSON header and its data as Arrow (None when the data travels in the header)."""
    cls_name = type(task).__name__
    data = task.data
    table: pa.Table | None = None
    if data is None:
        kind, json_data = "none", None
    elif isinstance(data, pa.Table):
        kind, json_data, table = "arrow", None, data
    elif isinstance(data, pd.DataFrame):
        kind, json_data = "pandas", None
        try:
            table = pa.Table.from_pandas(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TaskSerializationError(
                f"{cls_name} {task.task_id!r}: its DataFrame cannot become Arrow ({exc})"
            ) from exc
    else:
        kind, json_data = "json", _json_safe(data, f"data of type {type(data).__name__}", cls_name)
    extra = {
        f.name: _json_safe(getattr(task, f.name), f"field '{f.name}'", cls_name)
        for f in dataclasses.fields(task)
        if f.name not in _BASE_FIELDS
    }
    header = {
        "schema": SCHEMA_VERSION,
        "type": task_type_name(type(task)),
        "task_id": task.task_id,
        "dataset_name": task.dataset_name,
        "data_kind": kind,
        "data": json_data,
        "fields": extra,
        "stage_perf": _perf(task, cls_name),
        "metadata": _json_safe(task._metadata, "_metadata", cls_name),
    }
    return header, table


def encode_task(task: Task[Any]) -> bytes:
    """Serialise `task` (see the module docstring for the layout)."""
    header, table = _header(task)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return _with_stream(MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes, table)


def encode_tasks(tasks: Sequence[Task[Any]]) -> bytes | None:
    """Several tasks as one payload: their headers, then one Arrow IPC stream of their tables
    one after another, so that a thousand tiny tasks cost one stream, not a thousand. None when
    they cannot share one (tables of different schemas, or pandas frames, whose index would
    not survive slicing)."""
    headers: list[dict[str, Any]] = []
    tables: list[pa.Table] = []
    rows = 0
    for task in tasks:
        header, table = _header(task)
        if header["data_kind"] == "pandas":
            return None
        if table is not None:
            if tables and not table.schema.equals(tables[0].schema, check_metadata=True):
                return None
            header["rows"] = [rows, table.num_rows]
            rows += table.num_rows
            tables.append(table)
        headers.append(header)
    header_bytes = json.dumps(
        {"schema": SCHEMA_VERSION, "tasks": headers}, separators=(",", ":")
    ).encode()
    table = pa.concat_tables(tables).combine_chunks() if tables else None
    return _with_stream(MULTI_MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes, table)


class TaskPayload:
    """A decoded `encode_tasks` payload: task `k` is rebuilt on each `task(k)` (a fresh object
    over the same, shared and immutable, Arrow data)."""

    def __init__(self, payload: bytes | memoryview):
        header, rest = _split(payload, MULTI_MAGIC, "gristmill task payload")
        self._headers: list[dict[str, Any]] = header["tasks"]
        self._table = pa.ipc.open_stream(pa.py_buffer(rest)).read_all() if len(rest) else None

    def __len__(self) -> int:
        return len(self._headers)

    def task(self, index: int) -> Task[Any]:
        """Task `index` of the payload."""
        header = self._headers[index]
        data = header["data"]
        if header["data_kind"] == "arrow":
            assert self._table is not None
            start, count = header["rows"]
            data = self._table.slice(start, count)
        return _build(header, data)


def _split(
    payload: bytes | memoryview, magic: bytes, what: str
) -> tuple[dict[str, Any], memoryview]:
    """The header of an encoded payload, checked, and the bytes after it."""
    view = memoryview(payload)
    if bytes(view[: len(magic)]) != magic:
        raise TaskSerializationError(f"not a {what}: the bytes do not start with its marker")
    start = len(magic) + _LENGTH.size
    if len(view) < start:
        raise TaskSerializationError(f"truncated {what}: no header length")
    (length,) = _LENGTH.unpack(view[len(magic) : start])
    try:
        header = json.loads(bytes(view[start : start + length]))
    except ValueError as exc:
        raise TaskSerializationError(f"corrupt {what} header: {exc}") from exc
    if header.get("schema") != SCHEMA_VERSION:
        raise TaskSerializationError(
            f"task encoded with schema {header.get('schema')!r}; this gristmill reads "
            f"schema {SCHEMA_VERSION}"
        )
    return header, view[start + length :]


def _build(header: dict[str, Any], data: Any) -> Task[Any]:
    cls = task_type(header["type"])
    task: Task[Any] = cls(
        task_id=header["task_id"],
        dataset_name=header["dataset_name"],
        data=data,
        _stage_perf=[StagePerfStats.from_dict(p) for p in header["stage_perf"]],
        _metadata=header["metadata"],
        **header["fields"],
    )
    return task


# The end-of-stream marker of the Arrow IPC stream format.
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
# Tables up to this size are assembled from their messages (see `_with_stream`).
_ASSEMBLE_MAX_BYTES = 1 << 20


def _with_stream(prefix: bytes, table: pa.Table | None) -> bytes:
    """`prefix`, then the table as an Arrow IPC stream. A small table without dictionaries or
    nested types is the schema message, the batches' messages and the end marker put together
    directly: the same bytes the stream writer makes, in a third of its time (tiny tasks are
    encoded by the thousand). A large one is written by the stream writer behind the prefix,
    which copies its buffers once, not three times."""
    if table is None:
        return prefix
    simple = not any(pa.types.is_dictionary(f.type) or f.type.num_fields for f in table.schema)
    if simple and table.nbytes <= _ASSEMBLE_MAX_BYTES:
        parts = [table.schema.serialize(), *(b.serialize() for b in table.to_batches())]
        return b"".join([prefix, *(p.to_pybytes() for p in parts), _EOS])
    sink = pa.BufferOutputStream()
    sink.write(prefix)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def decode_task(payload: bytes | memoryview) -> Task[Any]:
    """Rebuild a task from `encode_task`'s bytes, as an instance of its original class."""
    header, rest = _split(payload, MAGIC, "gristmill task")
    kind = header["data_kind"]
    data: Any
    if kind in ("arrow", "pandas"):
        table = pa.ipc.open_stream(pa.py_buffer(rest)).read_all()
        data = table if kind == "arrow" else table.to_pandas()
    elif kind in ("json", "none"):
        data = header["data"]
    else:
        raise TaskSerializationError(f"unknown data kind {kind!r} in task header")
    return _build(header, data)
