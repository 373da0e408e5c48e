"""Tasks as bytes: a small JSON header, then the data as an Arrow IPC stream. Never pickle.

Layout: MAGIC (8 bytes) | header length (uint32, little-endian) | header (UTF-8 JSON) | Arrow IPC.
Tabular data (pyarrow.Table, pandas.DataFrame) travels as Arrow; other data must be JSON-safe.
Extra dataclass fields of a Task subclass travel in the header and must be JSON-safe too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from gristmill.errors import TaskSerializationError
from gristmill.tasks.perf import StagePerfStats
from gristmill.tasks.registry import task_type, task_type_name

if TYPE_CHECKING:
    from gristmill.tasks.base import Task

__all__ = ["SCHEMA_VERSION", "decode_task", "encode_task"]

MAGIC = b"GMTASK\x00\x00"
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


def encode_task(task: Task[Any]) -> bytes:
    """Serialise `task` (see the module docstring for the layout)."""
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
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    sink = pa.BufferOutputStream()
    sink.write(MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes)
    if table is not None:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return bytes(sink.getvalue())


def decode_task(payload: bytes | memoryview) -> Task[Any]:
    """Rebuild a task from `encode_task`'s bytes, as an instance of its original class."""
    view = memoryview(payload)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise TaskSerializationError("not a gristmill task: the bytes do not start with its marker")
    start = len(MAGIC) + _LENGTH.size
    if len(view) < start:
        raise TaskSerializationError("truncated gristmill task: no header length")
    (length,) = _LENGTH.unpack(view[len(MAGIC) : start])
    try:
        header = json.loads(bytes(view[start : start + length]))
    except ValueError as exc:
        raise TaskSerializationError(f"corrupt gristmill task header: {exc}") from exc
    if header.get("schema") != SCHEMA_VERSION:
        raise TaskSerializationError(
            f"task encoded with schema {header.get('schema')!r}; this gristmill reads "
            f"schema {SCHEMA_VERSION}"
        )
    cls = task_type(header["type"])
    kind = header["data_kind"]
    data: Any
    if kind in ("arrow", "pandas"):
        buffer = pa.py_buffer(view[start + length :])
        table = pa.ipc.open_stream(buffer).read_all()
        data = table if kind == "arrow" else table.to_pandas()
    elif kind in ("json", "none"):
        data = header["data"]
    else:
        raise TaskSerializationError(f"unknown data kind {kind!r} in task header")
    task: Task[Any] = cls(
        task_id=header["task_id"],
        dataset_name=header["dataset_name"],
        data=data,
        _stage_perf=[StagePerfStats.from_dict(p) for p in header["stage_perf"]],
        _metadata=header["metadata"],
        **header["fields"],
    )
    return task
