"""JsonlReader and ParquetReader: paths, partitions, compression, and every bad-input case."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill import Pipeline
from gristmill.errors import DataFormatError, GristmillError
from gristmill.stages.text.io import FilePartitioningStage, JsonlReader, ParquetReader
from gristmill.stages.text.io.partition import parse_size, partition_files
from gristmill.tasks import EmptyTask, FileGroupTask, content_task_id, iter_drops


def _write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def _texts(tasks: list[object]) -> list[str]:
    return [t for task in tasks for t in task.to_pyarrow()["text"].to_pylist()]  # type: ignore[attr-defined]


def _read(path: str, **options: object) -> list[object]:
    return Pipeline("read", [JsonlReader(path, **options)]).run()  # type: ignore[arg-type]


def test_reads_every_document_of_every_file_in_path_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.jsonl", '{"text": "b1"}\n{"text": "b2"}\n')
    _write(tmp_path / "a.jsonl", '{"text": "a1", "n": 1}\n')
    _write(tmp_path / "notes.txt", "not data")
    out = _read(str(tmp_path))
    assert _texts(out) == ["a1", "b1", "b2"]
    assert [t.task_id for t in out] != []


def test_fields_keeps_only_the_named_columns(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", '{"text": "a", "n": 1, "url": "u"}\n')
    [batch] = _read(str(tmp_path), fields=["url", "text"])
    assert batch.to_pyarrow().column_names == ["url", "text"]  # type: ignore[attr-defined]


def test_globs_and_gzip_and_zstd_files_are_read(tmp_path: Path) -> None:
    _write(tmp_path / "x.jsonl.gz", gzip.compress(b'{"text": "gz"}\n'))
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(b'{"text": "zst"}\n')
    _write(tmp_path / "y.jsonl.zst", sink.getvalue().to_pybytes())
    assert _texts(_read(str(tmp_path / "*.jsonl.*"))) == ["gz", "zst"]


def test_blank_lines_are_ignored_and_an_empty_file_gives_no_documents(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", '\n{"text": "one"}\n\n\r\n{"text": "two"}')
    _write(tmp_path / "b.jsonl", "")
    out = _read(str(tmp_path))
    assert _texts(out) == ["one", "two"]
    assert len(out) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"text": "ok"}\n{"text": "broken\n',
            "a.jsonl:2: malformed JSON: Unterminated string starting at (column 10)",
        ),
        (
            b'{"text": "ok"}\n\n{"text": "caf\xe9"}\n',
            "a.jsonl:3: not valid UTF-8 (byte 0xe9 at byte 14)",
        ),
        (b'{"text": "ok"}\n{"body": "no text"}\n', "a.jsonl:2: no 'text' field"),
        (b'{"text": "ok"}\n{"text": 42}\n', "a.jsonl:2: field 'text' is number, expected a string"),
        (b'{"text": "ok"}\n{"text": null}\n', "a.jsonl:2: field 'text' is null, expected a string"),
        (b'["text", "ok"]\n', "a.jsonl:1: expected a JSON object, got array"),
    ],
)
def test_bad_input_names_stage_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = _write(tmp_path / "a.jsonl", content)
    with pytest.raises(DataFormatError) as caught:
        _read(path)
    assert str(caught.value) == f"jsonl_reader: {tmp_path}/{message}"


def test_skip_leaves_bad_lines_out_and_records_each_as_a_drop(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.jsonl", b'{"text": "one"}\n{oops}\n{"text": 7}\n{"text": "two"}\n\xff\n'
    )
    [batch] = _read(path, on_error="skip")
    assert _texts([batch]) == ["one", "two"]
    assert list(iter_drops(batch._metadata["drops"])) == [  # type: ignore[attr-defined]
        {
            "id": f"{path}:2",
            "stage": "jsonl_reader",
            "reason": "malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        },
        {
            "id": f"{path}:3",
            "stage": "jsonl_reader",
            "reason": "field 'text' is number, expected a string",
        },
        {
            "id": f"{path}:5",
            "stage": "jsonl_reader",
            "reason": "not valid UTF-8 (byte 0xff at byte 1)",
        },
    ]
    assert batch._stage_perf[-1].items_dropped == 3  # type: ignore[attr-defined]


def test_a_requested_field_is_null_where_a_line_lacks_it_and_an_error_where_all_do(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "a.jsonl", '{"text": "a", "url": "u"}\n{"text": "b"}\n')
    [batch] = _read(path, fields=["text", "url"])
    assert batch.to_pyarrow()["url"].to_pylist() == ["u", None]  # type: ignore[attr-defined]
    with pytest.raises(DataFormatError, match=r"a.jsonl: no column 'lang' \(it has: 'text', 'url'\)$"):  # fmt: skip
        _read(path, fields=["text", "lang"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"text": "a", "n": 1}\n\n{"text": "b", "n": null}\n{"text": "c", "n": "one"}\n',
            "a.jsonl:4: field 'n' is string, but it was number on line 1",
        ),
        (
            '{"text": "a", "n": 1}\n{"text": "b", "n": 2.5}\n{"text": "c", "n": true}\n',
            "a.jsonl:3: field 'n' is boolean, but it was number on line 1",
        ),
        (
            '{"m": {"k": "x"}}\n{"m": {"k": [1]}}\n',
            "a.jsonl:2: field 'm.k' is array, but it was string on line 1",
        ),
    ],
)
def test_a_field_whose_type_changes_is_named_with_both_lines(
    tmp_path: Path, content: str, message: str
) -> None:
    path = _write(tmp_path / "a.jsonl", content)
    for on_error in ("raise", "skip"):
        with pytest.raises(DataFormatError) as caught:
            _read(path, text_field=None, on_error=on_error)
        assert str(caught.value) == (
            f"jsonl_reader: {tmp_path}/{message} (a field keeps one type in a file)"
        )


def test_lines_that_disagree_inside_an_array_are_reported_for_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", '{"text": "a", "n": [1]}\n{"text": "b", "n": ["one"]}\n')
    with pytest.raises(DataFormatError, match=r"a.jsonl: lines disagree on a field's type: .*changed from number to string"):  # fmt: skip
        _read(path)


def test_a_path_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(GristmillError, match=rf"file_partitioning: no such file or directory: {tmp_path}/absent"):  # fmt: skip
        _read(str(tmp_path / "absent"))


def test_a_directory_without_matching_files_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "x")
    with pytest.raises(GristmillError, match=r"no files ending in \.jsonl, \.json"):
        _read(str(tmp_path))


def test_a_very_long_document_is_read_whole(tmp_path: Path) -> None:
    long_text = "word " * 3_000_000  # 15 MB on one line: larger than the reader's 8 MiB blocks
    path = _write(tmp_path / "a.jsonl", '{"text": "short"}\n{"text": "' + long_text + '"}\n')
    assert _texts(_read(path)) == ["short", long_text]


def test_partitions_group_files_deterministically(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"{i}.jsonl", '{"text": "x"}\n') for i in range(5)]
    stage = FilePartitioningStage(str(tmp_path), files_per_partition=2, file_extensions=[".jsonl"])
    groups = stage.process(EmptyTask())
    assert [g.data for g in groups] == [paths[0:2], paths[2:4], paths[4:]]
    assert [g.task_id for g in groups] == [content_task_id(*g.data) for g in groups]
    assert [g.task_id for g in stage.process(EmptyTask())] == [g.task_id for g in groups]


def test_partition_by_blocksize_fills_groups_up_to_the_size() -> None:
    files = ["a", "b", "c", "d", "e"]
    assert partition_files(files, [40, 40, 40, 200, 10], blocksize=100) == [["a", "b", "c"], ["d"], ["e"]]  # fmt: skip
    assert partition_files(files) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    with pytest.raises(ValueError, match="not both"):
        partition_files(files, files_per_partition=2, blocksize=10)


def test_sizes_parse_with_units() -> None:
    assert parse_size("128MB") == 128_000_000
    assert parse_size("1.5 GiB") == 1_610_612_736
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match=r"not a size: 'lots'"):
        parse_size("lots")


def test_parquet_reader_reads_and_checks_its_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["p1", "p2"], "n": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["p3", None]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    read = Pipeline("r", [ParquetReader(str(tmp_path / "a.parquet"))]).run()
    assert _texts(read) == ["p1", "p2"]
    with pytest.raises(DataFormatError, match=rf"parquet_reader: {tmp_path}/b.parquet#2: row has no 'text'"):  # fmt: skip
        Pipeline("r", [ParquetReader(str(tmp_path / "b.parquet"))]).run()
    [skipped] = Pipeline("r", [ParquetReader(str(tmp_path / "b.parquet"), on_error="skip")]).run()
    assert _texts([skipped]) == ["p3"]
    assert skipped._metadata["drops"][0]["ids"] == [f"{tmp_path}/b.parquet#2"]
    with pytest.raises(DataFormatError, match=r"c.parquet: no column 'text' \(it has: 'body'\)"):
        Pipeline("r", [ParquetReader(str(tmp_path / "c.parquet"))]).run()


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.parquet", b"this is not parquet")
    with pytest.raises(DataFormatError, match=rf"parquet_reader: {path}: not a readable Parquet file"):  # fmt: skip
        Pipeline("r", [ParquetReader(path)]).run()


def test_reading_stage_takes_a_file_group_directly(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", '{"text": "direct"}\n')
    [batch] = Pipeline("r", [JsonlReader(path).decompose()[1]]).run(
        initial_tasks=[FileGroupTask(task_id="g", data=[path])]
    )
    assert _texts([batch]) == ["direct"]
    assert batch._metadata == {"source_files": [path]}
