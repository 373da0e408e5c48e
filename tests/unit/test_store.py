"""The task store: content-addressed objects holding a manifest's outputs, small tasks inline,
verified reads that refuse references outside the reading team's directory."""

from __future__ import annotations

import base64
from pathlib import Path

import pyarrow as pa
import pytest

from gristmill import DocumentBatch
from gristmill.bus import INLINE_MAX_BYTES, DataRef
from gristmill.bus.subjects import SubjectError
from gristmill.errors import TaskIdError
from gristmill.store import StoreError, TaskStore, within


def _task(task_id: str = "t1", rows: int = 3, width: int = 1) -> DocumentBatch:
    texts = [f"document {i} " + "x" * width for i in range(rows)]
    return DocumentBatch(task_id=task_id, dataset_name="web", data=pa.table({"text": texts}))


def test_a_manifests_stored_outputs_share_one_content_addressed_object(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    big = [_task("a", width=INLINE_MAX_BYTES), _task("b", width=INLINE_MAX_BYTES)]
    refs = store.put_tasks("web", "job1", 2, "k1", big)
    assert refs[0].uri == refs[1].uri
    [path] = (tmp_path / "web" / "job1" / "2").iterdir()
    assert path.name.startswith("k1.")
    assert path.name.endswith(".tasks")
    assert refs[0].uri == str(path)
    assert (refs[0].offset, refs[1].offset) == (0, refs[0].bytes)
    assert path.stat().st_size == refs[0].bytes + refs[1].bytes
    assert [store.get(r, "web").task_id for r in refs] == ["a", "b"]
    assert store.get(refs[1], "web").to_pyarrow().equals(big[1].to_pyarrow())
    assert store.put_tasks("web", "job1", 2, "k1", big) == refs  # a retry: same object, same refs


def test_other_bytes_for_the_same_manifest_never_overwrite_the_first(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    first = store.put("web", "job1", 0, _task(width=5000))
    second = store.put("web", "job1", 0, _task(width=6000))  # an attempt that made other bytes
    assert first.uri != second.uri
    assert store.get(first, "web").num_items == 3  # the first reference handed out still reads
    assert len(list((tmp_path / "web" / "job1" / "0").iterdir())) == 2


def test_small_tasks_travel_inline_and_write_nothing(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    small, big = _task("s", rows=1), _task("b", width=INLINE_MAX_BYTES)
    refs = store.put_tasks("web", "job1", 1, "k2", [small, big])
    assert refs[0].inline
    assert not refs[0].uri
    assert base64.b64decode(refs[0].inline) == small.to_bytes()
    assert refs[1].uri
    assert refs[1].offset == 0
    assert store.get(refs[0], "web").task_id == "s"
    [stored] = store.put_tasks("web", "job1", 1, "k3", [small], inline=False)
    assert stored.uri
    assert not stored.inline


def test_damaged_or_missing_payloads_are_refused(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    ref = store.put("web", "job1", 0, _task())
    Path(ref.uri).write_bytes(Path(ref.uri).read_bytes()[:-1] + b"X")
    with pytest.raises(StoreError, match=r"does not match its reference .*checksum differs"):
        store.get(ref, "web")
    Path(ref.uri).unlink()
    with pytest.raises(StoreError, match=rf"stored task missing: {ref.uri}"):
        store.get(ref, "web")
    inline = store.put_tasks("web", "job1", 0, "k", [_task(rows=1)])[0]
    forged = inline.model_copy(update={"inline": base64.b64encode(b"other bytes").decode()})
    with pytest.raises(
        StoreError, match=r"an inline task payload does not match its reference \(11 bytes"
    ):
        store.get(forged, "web")


@pytest.mark.parametrize(
    "uri",
    [
        "/etc/passwd",
        "{root}/other/job1/0/x.tasks",
        "{root}/web/../other/job1/0/x.tasks",
        "{root}/web-team/job1/0/x.tasks",
        "http://example.com/x.tasks",
        "memory://{root}/web/job1/0/x.tasks",
    ],
)
def test_a_reference_outside_the_teams_store_is_refused_before_any_read(
    tmp_path: Path, uri: str
) -> None:
    store = TaskStore(str(tmp_path))
    ref = DataRef(uri=uri.format(root=tmp_path), rows=1, bytes=1, sha256="a" * 64)
    with pytest.raises(StoreError, match=r"is outside team web's store .*; refused"):
        store.get(ref, "web")


def test_names_that_could_escape_the_store_are_refused(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    with pytest.raises(SubjectError):
        store.put("../web", "job1", 0, _task())
    with pytest.raises(TaskIdError, match=r"manifest key id '../x' cannot be a task id"):
        store.put_tasks("web", "job1", 0, "../x", [_task()])


def test_paths_are_compared_after_normalising(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    assert within(f"{root}/a/b", root)
    assert within(root, root)
    assert not within(f"{root}/../escape", root)
    assert not within(f"{root}-sibling/x", root)
    assert within("s3://bucket/out/x", "s3://bucket/out")
    assert not within("s3://bucket/out/../secret", "s3://bucket/out")
    assert not within("s3://other/out/x", "s3://bucket/out")
    assert not within("s3://bucket/outside", "s3://bucket/out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    assert not within(f"{root}/link/escape", root)


def test_a_jobs_payloads_are_deleted_together(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    store.put("web", "job1", 0, _task())
    store.put("web", "job2", 0, _task())
    assert store.delete_job("web", "job1") is True
    assert not (tmp_path / "web" / "job1").exists()
    assert (tmp_path / "web" / "job2").exists()
    assert store.delete_job("web", "job1") is False


def test_the_store_works_on_fsspec_urls() -> None:
    store = TaskStore("memory://gristmill-store-test")
    ref = store.put("web", "job1", 0, _task())
    assert ref.uri.startswith("memory://gristmill-store-test/web/job1/0/t1.")
    assert store.get(ref, "web").num_items == 3
    assert store.delete_job("web", "job1") is True


def test_two_attempts_on_an_object_store_keep_both_references_valid() -> None:
    store = TaskStore("memory://gristmill-race-test")
    first = store.put_tasks("web", "job1", 1, "k", [_task(width=6000)], inline=False)
    second = store.put_tasks("web", "job1", 1, "k", [_task(width=7000)], inline=False)
    assert first[0].uri != second[0].uri  # no check-then-write race can swap one for the other
    assert store.get(first[0], "web").num_items == store.get(second[0], "web").num_items == 3
    store.delete_job("web", "job1")


def test_a_manifests_small_outputs_share_one_payload_read_once(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path))
    small = [_task(f"s{i}", rows=1) for i in range(5)]
    refs = store.put_tasks("web", "job1", 1, "k", small)
    assert {r.uri for r in refs} == {refs[0].uri}
    assert [r.part for r in refs] == [0, 1, 2, 3, 4]
    assert all(r.bytes == Path(r.uri).stat().st_size for r in refs)
    assert [store.get(r, "web").task_id for r in refs] == ["s0", "s1", "s2", "s3", "s4"]
    Path(refs[0].uri).unlink()  # every later read is served from the decoded payload
    assert store.get(refs[3], "web").to_pyarrow().equals(small[3].to_pyarrow())
    fresh = TaskStore(str(tmp_path))
    with pytest.raises(StoreError, match=r"stored task missing: "):
        fresh.get(refs[3], "web")
    beyond = refs[0].model_copy(update={"part": 9})
    with pytest.raises(StoreError, match=r"stored payload .* has no task 9 \(5 tasks\)"):
        store.get(beyond, "web")
