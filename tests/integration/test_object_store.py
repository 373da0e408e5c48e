"""The store on an S3-compatible object store (moto's server on loopback, through s3fs): writes
are whole or absent, the first writer of a content-addressed object wins, a write cut short
publishes nothing, and a service job with GRISTMILL_STORE=s3://... writes what LocalExecutor
writes, through the same code paths as the embedded default."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import yaml

from gristmill import DocumentBatch, LocalExecutor, Pipeline
from gristmill import fs as gfs
from gristmill.executors.service import ServiceExecutor
from gristmill.store import TaskStore

from service_helpers import ROOT, doc_ids, service_under, written

pytestmark = pytest.mark.integration

BUCKET = "gristmill-test"
QUALITY = ROOT / "examples" / "pipelines" / "quality.yaml"


@pytest.fixture(scope="module")
def s3() -> Iterator[fsspec.AbstractFileSystem]:
    """A moto S3 server on loopback, with this process (and its children) pointed at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _objects(fs: fsspec.AbstractFileSystem, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p.removeprefix(f"{BUCKET}/") for p in fs.find(f"{BUCKET}/{prefix}"))


def test_an_atomic_write_publishes_the_whole_object_or_nothing(
    s3: fsspec.AbstractFileSystem,
) -> None:
    with gfs.atomic_write(f"s3://{BUCKET}/atomic/whole.bin") as handle:
        handle.write(b"a" * 1000)
        handle.write(b"b" * 1000)

    def cut_short() -> None:
        with gfs.atomic_write(f"s3://{BUCKET}/atomic/cut.bin") as handle:
            handle.write(b"c" * 1000)
            raise RuntimeError("cut short")

    with pytest.raises(RuntimeError, match=r"^cut short$"):
        cut_short()
    assert _objects(s3, "atomic") == ["atomic/whole.bin"]  # no temporary objects, no part
    assert s3.cat_file(f"{BUCKET}/atomic/whole.bin") == b"a" * 1000 + b"b" * 1000


def test_the_first_writer_wins_and_a_write_cut_short_leaves_nothing(
    s3: fsspec.AbstractFileSystem,
) -> None:
    path = f"s3://{BUCKET}/once/task.arrow"
    with pytest.raises(OSError, match=r"^writing s3://gristmill-test/once/task.arrow failed half way \(injected fault\)$"):  # fmt: skip
        gfs.write_once(path, b"payload", fail_half_way=True)
    assert _objects(s3, "once") == []
    assert gfs.write_once(path, b"payload") == b"payload"
    assert gfs.write_once(path, b"another") == b"payload"  # the object there is kept
    assert s3.cat_file(f"{BUCKET}/once/task.arrow") == b"payload"


def test_tasks_round_trip_through_a_store_on_s3(s3: fsspec.AbstractFileSystem) -> None:
    import pyarrow as pa

    store = TaskStore(f"s3://{BUCKET}/store")
    task = DocumentBatch(task_id="t-1", data=pa.table({"id": ["a", "b"], "text": ["x", "y"]}))
    ref = store.put("web", "j1", 0, task)
    assert ref.uri.startswith(f"s3://{BUCKET}/store/web/")
    again = store.get(ref, "web")
    assert again.task_id == "t-1"
    assert again.to_pyarrow().equals(task.to_pyarrow())


def test_a_service_job_keeps_its_tasks_on_s3_and_writes_what_local_writes(
    s3: fsspec.AbstractFileSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_STORE", f"s3://{BUCKET}/service-store")

    def quality(output: Path) -> Pipeline:
        spec = yaml.safe_load(QUALITY.read_text())
        spec["stages"][0]["params"] = {"file_paths": str(ROOT / "examples" / "data")}
        spec["stages"][-1]["params"] = {"path": str(output)}
        return Pipeline.from_spec(spec)

    quality(tmp_path / "local").run(LocalExecutor())
    with service_under(tmp_path, workers=1, slots=2) as service:
        executor = ServiceExecutor(service.url)
        quality(tmp_path / "remote").run(executor)
    assert written(tmp_path / "remote") == written(tmp_path / "local")
    assert len(doc_ids(tmp_path / "remote")) == 340
    assert executor.state is not None
    assert (executor.state.items_in, executor.state.items_out) == (449, 340)
    stored = _objects(s3, "service-store")
    assert stored, "the service kept no task in the object store"
    assert all(p.startswith("service-store/default/") for p in stored)
    assert not any("/." in p for p in stored)  # no temporary objects
