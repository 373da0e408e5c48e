"""Tasks as bytes (JSON header + Arrow IPC, never pickle), and the built-in task kinds."""

from __future__ import annotations

import datetime as dt
import json
import struct
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from gristmill.errors import TaskSerializationError
from gristmill.tasks import (
    ROOT_TASK_ID,
    DocumentBatch,
    EmptyTask,
    FileGroupTask,
    StagePerfStats,
    Task,
)
from gristmill.tasks.codec import MAGIC


class SampleTask(Task[pd.DataFrame]):
    """A user task class that is not a dataclass itself."""

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return True


@dataclass(kw_only=True)
class SourcedBatch(DocumentBatch):
    """A user task class with an extra (JSON) field."""

    source: str = ""


PERF = [
    StagePerfStats("Reader", wall_time_s=0.25, items_in=0, items_out=3),
    StagePerfStats("Filter", 1.5, 3, 2, tasks_in=2, custom_metrics={"dropped": 1.0}),
]


def roundtrip(task: Task) -> Task:
    return Task.from_bytes(task.to_bytes())


def assert_lineage_survives(task: Task, back: Task) -> None:
    assert type(back) is type(task)
    assert back.task_id == task.task_id
    assert back.dataset_name == task.dataset_name
    assert back._metadata == task._metadata
    assert back._stage_perf == task._stage_perf


def reencode_header(payload: bytes, **changes: object) -> bytes:
    """`payload` with some header keys replaced (layout: MAGIC | uint32 LE length | JSON | IPC)."""
    start = len(MAGIC) + 4
    (length,) = struct.unpack("<I", payload[len(MAGIC) : start])
    header = json.loads(payload[start : start + length])
    header.update(changes)
    new = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(new)) + new + payload[start + length :]


def doc_bytes() -> bytes:
    return DocumentBatch(task_id="d1", data=pa.table({"a": [1, 2]})).to_bytes()


def mixed_table() -> pa.Table:
    return pa.table(
        {
            "i": pa.array([1, None, 3], pa.int64()),
            "f": pa.array([0.5, 1.5, None], pa.float64()),
            "s": pa.array(["x", None, "ünï"], pa.string()),
            "b": pa.array([True, False, None], pa.bool_()),
            "l": pa.array([[1, 2], None, []], pa.list_(pa.int64())),
            "t": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None, None], pa.timestamp("us")),
        }
    )


def test_document_batch_of_a_mixed_table_roundtrips_with_lineage():
    task = DocumentBatch(
        task_id="t1",
        dataset_name="web",
        data=mixed_table(),
        _stage_perf=list(PERF),
        _metadata={"source": "crawl", "shard": 3, "tags": ["a", "b"], "nested": {"k": None}},
    )
    back = roundtrip(task)
    assert_lineage_survives(task, back)
    assert isinstance(back.data, pa.Table)
    assert back.data.schema == task.data.schema
    assert back.data.equals(task.data)


def test_document_batch_of_a_zero_row_table_roundtrips_with_its_schema():
    table = pa.table({"a": pa.array([], pa.int64()), "b": pa.array([], pa.string())})
    back = roundtrip(DocumentBatch(task_id="z", data=table))
    assert back.data.num_rows == 0
    assert back.data.schema == table.schema


def test_document_batch_of_a_dataframe_comes_back_as_an_equal_dataframe():
    frame = pd.DataFrame({"a": [1, 2, 3], "s": ["x", None, "z"], "f": [0.5, None, 2.0]})
    task = DocumentBatch(task_id="p", dataset_name="ds", data=frame, _metadata={"k": "v"})
    back = roundtrip(task)
    assert_lineage_survives(task, back)
    assert isinstance(back.data, pd.DataFrame)
    pd.testing.assert_frame_equal(back.data, frame)


def test_dataframe_with_a_non_default_index_keeps_it():
    frame = pd.DataFrame({"a": [1, 2]}, index=[5, 7])
    pd.testing.assert_frame_equal(roundtrip(DocumentBatch(data=frame)).data, frame)


def test_file_group_task_roundtrips():
    task = FileGroupTask(
        task_id="g",
        dataset_name="ds",
        data=["s3://b/a.jsonl", "/tmp/b.jsonl"],
        _stage_perf=list(PERF),
        _metadata={"n": 2},
    )
    back = roundtrip(task)
    assert_lineage_survives(task, back)
    assert back.data == ["s3://b/a.jsonl", "/tmp/b.jsonl"]


def test_empty_task_roundtrips():
    task = EmptyTask(_metadata={"run": "r1"})
    back = roundtrip(task)
    assert_lineage_survives(task, back)
    assert back.task_id == ROOT_TASK_ID
    assert back.data is None


def test_user_task_class_that_is_not_a_dataclass_roundtrips():
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    task = SampleTask(task_id="s", dataset_name="d", data=frame, _stage_perf=list(PERF))
    back = roundtrip(task)
    assert_lineage_survives(task, back)
    pd.testing.assert_frame_equal(back.data, frame)
    assert SampleTask.from_bytes(task.to_bytes()).task_id == "s"


def test_user_dataclass_task_keeps_its_extra_field():
    task = SourcedBatch(task_id="u", data=pa.table({"a": [1]}), source="s3://bucket/x")
    back = roundtrip(task)
    assert_lineage_survives(task, back)
    assert back.source == "s3://bucket/x"
    assert back.data.equals(task.data)


def test_subclass_from_bytes_accepts_bytes_of_that_subclass():
    task = SourcedBatch(task_id="u", data=pa.table({"a": [1]}), source="x")
    assert DocumentBatch.from_bytes(task.to_bytes()).source == "x"


def test_encoded_tasks_contain_no_pickle():
    for task in (
        DocumentBatch(data=mixed_table()),
        DocumentBatch(data=pd.DataFrame({"a": [1]})),
        FileGroupTask(data=["a"]),
        EmptyTask(),
    ):
        payload = task.to_bytes()
        assert payload.startswith(MAGIC)
        assert b"\x80\x04\x95" not in payload
        assert b"\x80\x05\x95" not in payload


def test_non_json_metadata_is_refused_naming_the_field():
    task = DocumentBatch(data=pa.table({"a": [1]}), _metadata={"when": object()})
    with pytest.raises(TaskSerializationError, match="DocumentBatch: _metadata is not JSON"):
        task.to_bytes()


def test_nan_in_metadata_is_refused():
    task = DocumentBatch(data=pa.table({"a": [1]}), _metadata={"score": float("nan")})
    with pytest.raises(TaskSerializationError, match="_metadata is not JSON-serialisable"):
        task.to_bytes()


def test_metadata_with_non_string_keys_is_refused_rather_than_changed():
    # JSON turns the key 1 into "1": the task would come back with different metadata.
    task = DocumentBatch(data=pa.table({"a": [1]}), _metadata={1: "x"})
    with pytest.raises(TaskSerializationError, match="_metadata"):
        task.to_bytes()


def test_non_json_custom_metric_raises_task_serialization_error():
    perf = StagePerfStats("S", custom_metrics={"m": object()})  # type: ignore[dict-item]
    task = DocumentBatch(data=pa.table({"a": [1]}), _stage_perf=[perf])
    with pytest.raises(TaskSerializationError):
        task.to_bytes()


def test_non_json_extra_field_is_refused_naming_the_field():
    task = SourcedBatch(data=pa.table({"a": [1]}), source={1, 2})  # type: ignore[arg-type]
    with pytest.raises(TaskSerializationError, match="SourcedBatch: field 'source' is not JSON"):
        task.to_bytes()


@pytest.mark.parametrize("payload", [b"", b"hello, not a task", b"\x80\x05\x95pickle"])
def test_bytes_that_are_not_a_task_are_refused(payload):
    with pytest.raises(TaskSerializationError, match=r"^not a gristmill task"):
        Task.from_bytes(payload)


def test_bytes_truncated_after_the_marker_are_refused():
    with pytest.raises(TaskSerializationError, match=r"^truncated gristmill task"):
        Task.from_bytes(MAGIC + b"\x01")


def test_another_schema_number_is_refused_naming_both_schemas():
    payload = reencode_header(doc_bytes(), schema=2)
    with pytest.raises(TaskSerializationError) as err:
        Task.from_bytes(payload)
    assert str(err.value) == "task encoded with schema 2; this gristmill reads schema 1"


def test_reencoded_header_without_changes_still_decodes():
    # Guards the helper above: the schema test fails for the schema, not a broken re-encoding.
    assert Task.from_bytes(reencode_header(doc_bytes())).data.equals(pa.table({"a": [1, 2]}))


def test_from_bytes_on_another_task_class_is_refused():
    with pytest.raises(TaskSerializationError) as err:
        FileGroupTask.from_bytes(doc_bytes())
    assert str(err.value) == "bytes hold a DocumentBatch, not a FileGroupTask"


def test_unknown_task_type_names_the_module_to_import():
    payload = reencode_header(doc_bytes(), type="no_such_pkg.tasks:Ghost")
    with pytest.raises(TaskSerializationError) as err:
        Task.from_bytes(payload)
    assert str(err.value) == (
        "unknown task type 'no_such_pkg.tasks:Ghost': import module 'no_such_pkg.tasks' "
        "(which defines it) in this process before decoding"
    )


def test_document_batch_num_items_counts_rows():
    assert DocumentBatch(data=pa.table({"a": [1, 2, 3]})).num_items == 3
    assert DocumentBatch(data=pd.DataFrame({"a": [1, 2]})).num_items == 2
    assert DocumentBatch(data=None).num_items == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "valid"),
    [
        (pa.table({"a": pa.array([], pa.int64())}), False),
        (pd.DataFrame({"a": []}), False),
        (None, False),
        (pa.table({"a": [1]}), True),
        (pd.DataFrame({"a": [1]}), True),
    ],
    ids=["empty_table", "empty_frame", "none", "table", "frame"],
)
def test_document_batch_validate_is_false_only_without_rows(data, valid):
    assert DocumentBatch(data=data).validate() is valid


def test_document_batch_columns_of_table_and_frame():
    assert DocumentBatch(data=pa.table({"a": [1], "b": ["x"]})).columns == ["a", "b"]
    assert DocumentBatch(data=pd.DataFrame({"a": [1], "b": ["x"]})).columns == ["a", "b"]


def test_table_to_pandas_and_frame_to_pyarrow_hold_equal_content():
    table = pa.table({"a": [1, 2], "s": ["x", "y"]})
    frame = pd.DataFrame({"a": [1, 2], "s": ["x", "y"]})
    pd.testing.assert_frame_equal(DocumentBatch(data=table).to_pandas(), frame)
    converted = DocumentBatch(data=frame).to_pyarrow()
    # pandas 3 strings become large_string, pandas 2 objects become string: compare content
    assert converted.column_names == ["a", "s"]
    assert converted.to_pylist() == table.to_pylist()


def test_conversions_to_the_held_type_return_the_same_object():
    table = pa.table({"a": [1]})
    frame = pd.DataFrame({"a": [1]})
    assert DocumentBatch(data=table).to_pyarrow() is table
    assert DocumentBatch(data=frame).to_pandas() is frame


@pytest.mark.parametrize(
    ("paths", "valid"),
    [([], False), (["a.jsonl"], True), (["a", "b"], True), (["a", ""], False), (["a", 3], False)],
)
def test_file_group_task_validate(paths, valid):
    task = FileGroupTask(data=paths)
    assert task.validate() is valid
    assert task.num_items == len(paths)


def test_empty_task_defaults():
    task = EmptyTask()
    assert task.task_id == ROOT_TASK_ID == "root"
    assert task.data is None
    assert task.num_items == 0
    assert task.validate() is True
    assert task._stage_perf == []
    assert task._metadata == {}


def test_many_small_tasks_share_one_payload_and_come_back_as_they_were() -> None:
    from gristmill.tasks.codec import TaskPayload, encode_tasks

    tasks: list[Any] = [
        DocumentBatch(task_id=f"t{i}", dataset_name="d", data=pa.table({"n": [i, i + 1]}))
        for i in range(3)
    ]
    tasks.append(FileGroupTask(task_id="files", data=["/a.jsonl"]))
    tasks[1]._metadata["k"] = "v"
    payload = encode_tasks(tasks)
    assert payload is not None
    shared = TaskPayload(payload)
    assert len(shared) == 4
    for index, task in enumerate(tasks):
        back = shared.task(index)
        assert type(back) is type(task)
        assert (back.task_id, back.dataset_name, back._metadata) == (
            task.task_id,
            task.dataset_name,
            task._metadata,
        )
        if isinstance(task, DocumentBatch):
            assert back.to_pyarrow().equals(task.to_pyarrow())
        else:
            assert back.data == task.data
    assert shared.task(0) is not shared.task(0)  # a fresh task each time: stages may change it


def test_tasks_that_cannot_share_a_payload_are_said_so() -> None:
    from gristmill.tasks.codec import encode_tasks

    other_schemas = [
        DocumentBatch(task_id="a", data=pa.table({"n": [1]})),
        DocumentBatch(task_id="b", data=pa.table({"m": ["x"]})),
    ]
    assert encode_tasks(other_schemas) is None
    frames = [DocumentBatch(task_id="p", data=pd.DataFrame({"n": [1]}))]
    assert encode_tasks(frames) is None
