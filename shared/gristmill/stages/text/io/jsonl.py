"""Reading JSON Lines: `JsonlReader` (composite) and its reading stage `JsonlReaderStage`.

The fast path hands the whole file to pyarrow's multi-threaded JSON reader. Only when that
fails, or its result breaks a promise (invalid UTF-8, a missing or non-string text field), the
file is read again line by line to name the exact line, and to skip it with `on_error="skip"`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from gristmill.stages.text.io.reading import (
    FileReader,
    ReaderStage,
    json_type_name,
    read_decompressed,
)

__all__ = ["JSONL_EXTENSIONS", "JsonlReader", "JsonlReaderStage"]

JSONL_EXTENSIONS = [".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst"]
_BLOCK = 1 << 23  # 8 MiB: pyarrow splits work by blocks, and a line must fit in one


class JsonlReaderStage(ReaderStage):
    """Reads JSON Lines files (optionally .gz/.zst compressed) into a `DocumentBatch`.

    Blank lines are ignored; an empty file gives no documents. Errors name the file and the
    1-based line: invalid UTF-8, malformed JSON, a line that is not an object, a missing text
    field, a text field that is not a string, a field whose type differs from the one an
    earlier line gave it. A requested field must appear in the file; a line without it gets
    null there.
    """

    name = "jsonl_reader"

    def read_file(self, path: str, skipped: list[tuple[str, str]]) -> pa.Table | None:
        """See `ReaderStage.read_file`."""
        raw = read_decompressed(path)
        if not raw or raw.isspace():
            return None
        try:
            table = _parse(raw, _BLOCK)
            table.validate(full=True)  # pyarrow passes invalid UTF-8 through; this finds it
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return self._read_lines(path, raw, skipped)
        if not self._text_is_complete(table):
            return self._read_lines(path, raw, skipped)
        self.check_fields(path, table.column_names)
        return self.select(table)

    def _text_is_complete(self, table: pa.Table) -> bool:
        if self.text_field is None:
            return True
        if self.text_field not in table.column_names:
            return False
        column = table.column(self.text_field)
        is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        return bool(is_text and column.null_count == 0)

    def _read_lines(self, path: str, raw: bytes, skipped: list[tuple[str, str]]) -> pa.Table | None:
        good: list[tuple[int, bytes]] = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            problem = self._problem(line)
            if problem is None:
                good.append((number, line))
            elif self.on_error == "skip":
                skipped.append((f"{path}:{number}", problem))
            else:
                raise self.fail(f"{path}:{number}", problem)
        if not good:
            return None
        block = max(_BLOCK, 2 * max(len(line) for _, line in good))
        try:
            table = _parse(b"\n".join(line for _, line in good), block)
        except pa.ArrowInvalid as exc:  # each line is fine alone: the lines disagree on types
            disagreement = _first_disagreement(good)
            if disagreement is not None:
                number, problem = disagreement
                raise self.fail(f"{path}:{number}", problem) from exc
            raise self.fail(path, f"lines disagree on a field's type: {exc}") from exc
        self.check_fields(path, table.column_names)
        return self.select(table)

    def _problem(self, line: bytes) -> str | None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at byte {exc.start + 1})"
        try:
            record: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"malformed JSON: {exc.msg} (column {exc.colno})"
        if not isinstance(record, dict):
            return f"expected a JSON object, got {json_type_name(record)}"
        if self.text_field is None:
            return None
        if self.text_field not in record:
            return f"no '{self.text_field}' field"
        if not isinstance(record[self.text_field], str):
            kind = json_type_name(record[self.text_field])
            return f"field '{self.text_field}' is {kind}, expected a string"
        return None


def _first_disagreement(lines: list[tuple[int, bytes]]) -> tuple[int, str] | None:
    """The first (line, problem) where a field's JSON type differs from the one it had on an
    earlier line (null fits any type; fields of objects are named `outer.inner`); None when
    no field does (the lines disagree inside an array)."""
    first: dict[str, tuple[str, int]] = {}
    for number, line in lines:
        for field, kind in _field_kinds(json.loads(line)):
            seen, where = first.setdefault(field, (kind, number))
            if seen != kind:
                return number, (
                    f"field '{field}' is {kind}, but it was {seen} on line {where} (a field "
                    f"keeps one type in a file)"
                )
    return None


def _field_kinds(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in record.items():
        if value is None:
            continue
        yield prefix + key, json_type_name(value)
        if isinstance(value, dict):
            yield from _field_kinds(value, f"{prefix}{key}.")


def _parse(raw: bytes, block_size: int) -> pa.Table:
    return pa_json.read_json(
        pa.BufferReader(raw), read_options=pa_json.ReadOptions(block_size=block_size)
    )


class JsonlReader(FileReader):
    """Reads JSON Lines files (plain, .gz or .zst); see `FileReader` for the parameters."""

    name = "jsonl_reader"
    extensions = JSONL_EXTENSIONS
    reader_stage = JsonlReaderStage
