"""Writers and AddId: deterministic names, byte-identical reruns, modes, drops sidecars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill import DocumentBatch, Pipeline, ProcessingStage
from gristmill.errors import GristmillError
from gristmill.stages.text.io import AddId, JsonlReader, JsonlWriter, ParquetWriter
from gristmill.tasks import derive_task_id, record_drops


class DropShort(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Drops documents under 3 characters and records why, as filtering stages do."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        short = [len(t) < 3 for t in table["text"].to_pylist()]
        ids = [i for i, s in zip(table["id"].to_pylist(), short, strict=True) if s]
        out = DocumentBatch(data=table.filter(pa.array([not s for s in short])))
        record_drops(out, self.name, ids, "length < 3", [1] * len(ids), 3)
        return out


def _corpus(tmp_path: Path) -> str:
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jsonl").write_text('{"text": "alpha"}\n{"text": "b"}\n{"text": "gamma"}\n')
    (source / "b.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    return str(source)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _pipeline(source: str, out: Path, writer: type[Any] = JsonlWriter, **options: Any) -> Pipeline:
    return Pipeline(
        "w",
        [
            JsonlReader(source),
            AddId(),
            DropShort(),
            writer(str(out / "data"), drops_path=str(out / "drops"), **options),
        ],
    )


@pytest.mark.parametrize("writer", [JsonlWriter, ParquetWriter])
def test_rerun_into_the_same_directory_leaves_byte_identical_files(
    tmp_path: Path, writer: type[Any]
) -> None:
    source = _corpus(tmp_path)
    _pipeline(source, tmp_path / "out", writer).run()
    first = _snapshot(tmp_path / "out" / "data"), _snapshot(tmp_path / "out" / "drops")
    _pipeline(source, tmp_path / "out", writer).run()
    second = _snapshot(tmp_path / "out" / "data"), _snapshot(tmp_path / "out" / "drops")
    assert first == second
    assert len(first[0]) == 1  # b.jsonl lost every document: no data file, only drops
    assert len(first[1]) == 2
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_written_documents_plus_recorded_drops_are_all_documents_read(tmp_path: Path) -> None:
    outputs = _pipeline(_corpus(tmp_path), tmp_path / "out").run()
    data = [json.loads(line) for p in sorted((tmp_path / "out" / "data").iterdir()) for line in p.read_text().splitlines()]  # fmt: skip
    drops = [json.loads(line) for p in sorted((tmp_path / "out" / "drops").iterdir()) for line in p.read_text().splitlines()]  # fmt: skip
    assert [d["text"] for d in data] == ["alpha", "gamma"]
    assert sorted(d["id"] for d in drops) == sorted(
        [outputs[0]._metadata["drops"][0]["ids"][0], *outputs[1]._metadata["drops"][0]["ids"]]
    )
    assert len(data) + len(drops) == 5
    assert {(d["stage"], d["reason"], d["score"], d["threshold"]) for d in drops} == {
        ("DropShort", "length < 3", 1, 3)
    }
    written = [path for task in outputs for path in task.data]
    assert [Path(p).name for p in written] == [f"{_task_id_of(data[0]['id'])}.jsonl"]


def _task_id_of(doc_id: str) -> str:
    # AddId ids are <task id of the batch AddId read>_<row>; the writer names its file after the
    # batch it receives, whose id the executor derived through AddId and then DropShort.
    read_batch = doc_id.rsplit("_", 1)[0]
    return derive_task_id(derive_task_id(read_batch, "add_id", 0), "DropShort", 0)


def test_mode_ignore_keeps_an_existing_file_and_error_refuses_it(tmp_path: Path) -> None:
    source = _corpus(tmp_path)
    _pipeline(source, tmp_path / "out").run()
    [path] = (tmp_path / "out" / "data").iterdir()
    path.write_text("kept\n")
    _pipeline(source, tmp_path / "out", mode="ignore").run()
    assert path.read_text() == "kept\n"
    with pytest.raises(GristmillError, match=rf"jsonl_writer: {path} already exists \(mode='error'\)"):  # fmt: skip
        _pipeline(source, tmp_path / "out", mode="error").run()
    _pipeline(source, tmp_path / "out", mode="overwrite").run()
    assert path.read_text().startswith('{"text":"alpha"')


def test_fields_selects_written_columns(tmp_path: Path) -> None:
    batch = DocumentBatch(task_id="t1", data=pa.table({"text": ["a"], "id": ["i"], "junk": [1]}))
    Pipeline("w", [ParquetWriter(str(tmp_path), fields=["id", "text"])]).run(initial_tasks=[batch])
    assert pq.read_table(tmp_path / "t1.parquet").column_names == ["id", "text"]


def test_writers_take_fsspec_urls() -> None:
    batch = DocumentBatch(task_id="mem1", data=pa.table({"text": ["in memory"]}))
    [out] = Pipeline("w", [JsonlWriter("memory://gristmill-test/out")]).run(initial_tasks=[batch])
    assert out.data == ["memory://gristmill-test/out/mem1.jsonl"]
    with fsspec.open("memory://gristmill-test/out/mem1.jsonl", "rb") as handle:
        assert handle.read() == b'{"text":"in memory"}\n'


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path) -> None:
    class Exploding(JsonlWriter):
        def write_table(self, table: pa.Table, handle: Any) -> None:
            handle.write(b'{"text": "half')
            raise OSError("disk full")

    batch = DocumentBatch(task_id="t", data=pa.table({"text": ["a"]}))
    with pytest.raises(GristmillError, match="disk full"):
        Pipeline("w", [Exploding(str(tmp_path))]).run(initial_tasks=[batch])
    assert list(tmp_path.iterdir()) == []


def test_add_id_is_stable_across_runs_and_refuses_to_overwrite(tmp_path: Path) -> None:
    source = _corpus(tmp_path)

    def ids() -> list[str]:
        out = Pipeline("ids", [JsonlReader(source), AddId(id_prefix="web")]).run()
        return [i for task in out for i in task.to_pyarrow()["id"].to_pylist()]

    first = ids()
    assert first == ids()
    assert len(set(first)) == 5
    assert all(i.startswith("web_") for i in first)
    assert [i.rsplit("_", 1)[1] for i in first] == ["0", "1", "2", "0", "1"]
    batch = DocumentBatch(task_id="t", data=pa.table({"text": ["a"], "id": ["old"]}))
    with pytest.raises(GristmillError, match=r"add_id: task t already has a column 'id'"):
        Pipeline("ids", [AddId()]).run(initial_tasks=[batch])
    [replaced] = Pipeline("ids", [AddId(overwrite=True)]).run(initial_tasks=[batch])
    assert replaced.to_pyarrow()["id"].to_pylist() == ["t_0"]
