"""Exact deduplication: documents whose (optionally normalised) text is identical.

Three steps, each an ordinary pipeline, so any executor runs them and no process ever holds
the whole corpus:

1. identify, per batch: `ExactDuplicateHasher` adds a 128-bit MD5 of the text and
   `HashBucketWriter` writes (id, hash) to one of `num_buckets` buckets by hash;
2. per bucket: `DuplicateFinder` groups equal hashes and, in every group, keeps the document
   with the smallest id (string order, so the choice never depends on scheduling) and lists the
   others with the id they duplicate;
3. `ExactDuplicateRemoval` drops the listed documents from any later run over the same data,
   recording each as a drop ("exact duplicate of <kept id>").

`gristmill.workflows.ExactDeduplicationWorkflow` runs steps 1 and 2; add its `removal_stage()`
to your pipeline. Documents need stable ids: read with the same reader settings and `AddId`
in both runs.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.stages.base import ProcessingStage
from gristmill.stages.resources import WorkerMetadata
from gristmill.tasks import DocumentBatch, FileGroupTask, check_task_id, record_drops

__all__ = [
    "DuplicateFinder",
    "ExactDuplicateHasher",
    "ExactDuplicateRemoval",
    "HashBucketWriter",
    "normalize_text",
]

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, whitespace runs as one space, no leading or trailing whitespace."""
    return _SPACES.sub(" ", text).strip().lower()


class ExactDuplicateHasher(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds `hash_field`: the MD5 (hex) of `text_field`, normalised first with `normalize`."""

    name = "exact_duplicate_hasher"

    def __init__(
        self, text_field: str = "text", hash_field: str = "_hash", normalize: bool = False
    ):
        self.text_field, self.hash_field, self.normalize = text_field, hash_field, normalize

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The hash column."""
        return [], [self.hash_field]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with its hash column."""
        table = task.to_pyarrow()
        texts = table.column(self.text_field).to_pylist()
        prepare = normalize_text if self.normalize else (lambda t: t)
        hashes = [
            hashlib.md5(prepare(t).encode(), usedforsecurity=False).hexdigest() for t in texts
        ]
        return DocumentBatch(data=table.append_column(self.hash_field, pa.array(hashes)))


def bucket_of(hashes: pa.Array | pa.ChunkedArray, num_buckets: int) -> pa.Array:
    """The bucket of each hex hash: its first 8 hex digits modulo `num_buckets`."""
    prefixes = pc.utf8_slice_codeunits(hashes, 0, 8).to_pylist()
    return pa.array([int(p, 16) % num_buckets for p in prefixes], pa.int32())


class HashBucketWriter(ProcessingStage[DocumentBatch, FileGroupTask]):
    """Writes each batch's (id, hash) pairs to `path/bucket=<b>/<task_id>.parquet`."""

    name = "hash_bucket_writer"

    def __init__(
        self, path: str, num_buckets: int = 16, id_field: str = "id", hash_field: str = "_hash"
    ):
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        self.path, self.num_buckets = path, num_buckets
        self.id_field, self.hash_field = id_field, hash_field

    def inputs(self) -> tuple[list[str], list[str]]:
        """The id and hash columns."""
        return [], [self.id_field, self.hash_field]

    def process(self, task: DocumentBatch) -> FileGroupTask:
        """One small Parquet file per non-empty bucket."""
        # The id names files: never let one such as "../x" choose where they go.
        check_task_id(task.task_id, where=f"stage '{self.name}' was given a task whose")
        table = task.to_pyarrow().select([self.id_field, self.hash_field])
        table = table.rename_columns(["id", "hash"]).cast(
            pa.schema([("id", pa.string()), ("hash", pa.string())])
        )
        buckets = bucket_of(table.column("hash"), self.num_buckets)
        written = []
        for bucket in sorted(set(buckets.to_pylist())):
            part = table.filter(pc.equal(buckets, bucket))
            target = fs.join(self.path, f"bucket={bucket}/{task.task_id}.parquet")
            with fs.atomic_write(target) as handle:
                pq.write_table(part, handle)
            written.append(target)
        return FileGroupTask(data=written)


class DuplicateFinder(ProcessingStage[FileGroupTask, FileGroupTask]):
    """Reads one bucket's (id, hash) files and writes `path/duplicates-<bucket>.parquet`:
    every document that is not the smallest id of its hash group, with the id it duplicates."""

    name = "duplicate_finder"

    def __init__(self, path: str):
        self.path = path

    def process(self, task: FileGroupTask) -> FileGroupTask:
        """The duplicates of one bucket."""
        bucket = task._metadata["bucket"]
        table = pa.concat_tables(
            [pq.read_table(pa.BufferReader(fs.read_bytes(f))) for f in task.data]
        )
        ordered = table.sort_by([("hash", "ascending"), ("id", "ascending")])
        hashes = ordered.column("hash").to_pylist()
        ids = ordered.column("id").to_pylist()
        dup_ids, kept_ids = [], []
        kept = ""
        for index, (doc_hash, doc_id) in enumerate(zip(hashes, ids, strict=True)):
            if index and doc_hash == hashes[index - 1]:
                dup_ids.append(doc_id)
                kept_ids.append(kept)
            else:
                kept = doc_id
        target = fs.join(self.path, f"duplicates-{bucket}.parquet")
        with fs.atomic_write(target) as handle:
            pq.write_table(
                pa.table(
                    {
                        "id": pa.array(dup_ids, pa.string()),
                        "kept_id": pa.array(kept_ids, pa.string()),
                    }
                ),
                handle,
            )
        return FileGroupTask(data=[target])


class ExactDuplicateRemoval(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Drops the documents `DuplicateFinder` listed under `duplicates_path`, recording each.

    The list of duplicate ids (not the corpus) is loaded once per worker in `setup`.
    """

    name = "exact_duplicate_removal"

    def __init__(self, duplicates_path: str, id_field: str = "id"):
        self.duplicates_path, self.id_field = duplicates_path, id_field
        self._kept_for: dict[str, str] | None = None

    def inputs(self) -> tuple[list[str], list[str]]:
        """The id column."""
        return [], [self.id_field]

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Load the duplicate ids."""
        files = fs.expand_paths(self.duplicates_path, [".parquet"], self.name)
        tables = [pq.read_table(pa.BufferReader(fs.read_bytes(f))) for f in files]
        merged = pa.concat_tables(tables) if tables else pa.table({"id": [], "kept_id": []})
        self._kept_for = dict(
            zip(merged.column("id").to_pylist(), merged.column("kept_id").to_pylist(), strict=True)
        )

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch without its duplicates."""
        if self._kept_for is None:
            self.setup()
        kept_for = self._kept_for or {}
        table = task.to_pyarrow()
        ids = table.column(self.id_field).to_pylist()
        duplicate = [i in kept_for for i in ids]
        out = DocumentBatch(data=table.filter(pa.array([not d for d in duplicate])))
        by_kept: dict[str, list[str]] = {}
        for doc_id, is_dup in zip(ids, duplicate, strict=True):
            if is_dup:
                by_kept.setdefault(kept_for[doc_id], []).append(doc_id)
        for kept, dropped in by_kept.items():
            record_drops(out, self.name, dropped, f"exact duplicate of {kept}", duplicate_of=kept)
        return out
