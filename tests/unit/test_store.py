"""The task store: deterministic paths, idempotent writes, verified reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from gristmill import DocumentBatch
from gristmill.bus.subjects import SubjectError
from gristmill.store import StoreError, TaskStore


def _task() -> DocumentBatch:
    return DocumentBatch(task_id="t1", dataset_name="web", data=pa.table({"text": ["a", "b", "c"]}))


def test_put_writes_once_at_a_deterministic_path_and_get_reads_it_back(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    ref = store.put("web", "job1", 2, _task())
    assert ref.uri == f"{tmp_path}/web/job1/2/t1.task"
    assert ref.rows == 3
    assert ref.bytes == Path(ref.uri).stat().st_size
    again = store.put("web", "job1", 2, _task())
    assert again == ref  # a retried write: same place, same bytes
    assert [p.name for p in (tmp_path / "web" / "job1" / "2").iterdir()] == ["t1.task"]
    back = store.get(ref)
    assert back.task_id == "t1"
    assert back.to_pyarrow().equals(_task().to_pyarrow())


def test_damaged_or_missing_payloads_are_refused(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    ref = store.put("web", "job1", 0, _task())
    Path(ref.uri).write_bytes(Path(ref.uri).read_bytes()[:-1] + b"X")
    with pytest.raises(StoreError, match=r"does not match its reference .*checksum differs"):
        store.get(ref)
    Path(ref.uri).unlink()
    with pytest.raises(StoreError, match=rf"stored task missing: {ref.uri}"):
        store.get(ref)


def test_names_that_could_escape_the_store_are_refused(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    with pytest.raises(SubjectError):
        store.path_for("../web", "job1", 0, "t")
    with pytest.raises(StoreError, match=r"task id '../x' cannot name a file"):
        store.path_for("web", "job1", 0, "../x")


def test_the_store_works_on_fsspec_urls() -> None:
    store = TaskStore("memory://gristmill-store-test")
    ref = store.put("web", "job1", 0, _task())
    assert ref.uri == "memory://gristmill-store-test/web/job1/0/t1.task"
    assert store.get(ref).num_items == 3
