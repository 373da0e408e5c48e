"""Reading Parquet: `ParquetReader` (composite) and its reading stage `ParquetReaderStage`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gristmill.stages.text.io.reading import FileReader, ReaderStage, read_decompressed

__all__ = ["PARQUET_EXTENSIONS", "ParquetReader", "ParquetReaderStage"]

PARQUET_EXTENSIONS = [".parquet", ".pq"]


class ParquetReaderStage(ReaderStage):
    """Reads Parquet files into a `DocumentBatch`.

    Errors name the file, and for a missing text value the 1-based row: not a Parquet file, a
    missing column, a text column that is not strings, a row whose text is null. With
    `on_error="skip"` rows with null text are left out and recorded as drops (`FILE#ROW`).
    """

    name = "parquet_reader"

    def read_file(self, path: str, skipped: list[tuple[str, str]]) -> pa.Table | None:
        """See `ReaderStage.read_file`."""
        raw = read_decompressed(path)
        try:
            parquet = pq.ParquetFile(pa.BufferReader(raw))
            self.check_fields(path, parquet.schema_arrow.names)
            table = parquet.read(columns=self.fields)
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.fail(path, f"not a readable Parquet file ({exc})") from exc
        if self.text_field is None:
            return table
        column = table.column(self.text_field)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise self.fail(path, f"column '{self.text_field}' is {column.type}, expected strings")
        if column.null_count:
            nulls = pc.is_null(column)
            rows = [i for i, null in enumerate(nulls.to_pylist()) if null]
            if self.on_error == "raise":
                raise self.fail(f"{path}#{rows[0] + 1}", f"row has no '{self.text_field}'")
            skipped.extend((f"{path}#{row + 1}", f"no '{self.text_field}'") for row in rows)
            table = table.filter(pc.invert(nulls))
        return table if table.num_rows else None


class ParquetReader(FileReader):
    """Reads Parquet files; see `FileReader` for the parameters."""

    name = "parquet_reader"
    extensions = PARQUET_EXTENSIONS
    reader_stage = ParquetReaderStage
