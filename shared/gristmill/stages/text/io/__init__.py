"""Reading and writing documents: JSONL and Parquet readers and writers, and `AddId`."""

from gristmill.stages.text.io.add_id import AddId
from gristmill.stages.text.io.jsonl import JsonlReader, JsonlReaderStage
from gristmill.stages.text.io.parquet import ParquetReader, ParquetReaderStage
from gristmill.stages.text.io.partition import FilePartitioningStage
from gristmill.stages.text.io.reading import FileReader, ReaderStage
from gristmill.stages.text.io.writing import BaseWriter, JsonlWriter, ParquetWriter

__all__ = [
    "AddId",
    "BaseWriter",
    "FilePartitioningStage",
    "FileReader",
    "JsonlReader",
    "JsonlReaderStage",
    "JsonlWriter",
    "ParquetReader",
    "ParquetReaderStage",
    "ParquetWriter",
    "ReaderStage",
]
