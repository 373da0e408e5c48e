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

Or in one pass, against a persistent index shared by every run (`DedupIndex`, in
`gristmill.stages.deduplication.index`): `ExactDuplicateRemoval(index="web")` keeps the first
document to claim each hash, now or in any earlier run, and drops the rest as it goes, so a
later backfill dedups against everything kept before.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.errors import GristmillError
from gristmill.stages.base import ProcessingStage
from gristmill.stages.deduplication.index import (
    Claim,
    DedupIndex,
    default_index_root,
    index_path,
    source_of,
)
from gristmill.stages.resources import WorkerMetadata
from gristmill.tasks import DROPS_KEY, DocumentBatch, FileGroupTask, check_task_id, record_drops

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
    """Drops exact duplicates, recording each: those `DuplicateFinder` listed under
    `duplicates_path`, or, with `index`, every document whose hash a shared `DedupIndex` has
    seen already. Give exactly one of the two.

    With `duplicates_path`, the list of duplicate ids (not the corpus) is loaded once per
    worker in `setup`.

    With `index` (a name, under `index_root` or `default_index_root()`), each batch claims the
    hash of every document: `hash_field`'s hex hashes when the batch has that column, else
    the MD5 of `text_field` (normalised with `normalize`), as `ExactDuplicateHasher` makes
    them. A document is kept when it owns its hash: the first to claim it, in this run or any
    earlier one sharing the index. The claimant is `<index_owner>/<task id>`; task ids are
    repeatable, so a retried task keeps what it kept before, while another job (another
    `index_owner`) reading the same file finds its documents claimed. `shards` applies when
    the index is created.
    """

    name = "exact_duplicate_removal"

    def __init__(
        self,
        duplicates_path: str | None = None,
        id_field: str = "id",
        *,
        index: str | None = None,
        index_root: str | None = None,
        index_owner: str = "",
        text_field: str = "text",
        hash_field: str | None = None,
        normalize: bool = False,
        shards: int = 256,
    ):
        if (duplicates_path is None) == (index is None):
            given = "both" if duplicates_path is not None else "neither"
            raise GristmillError(
                f"stage '{self.name}': give exactly one of duplicates_path (the lists "
                f"DuplicateFinder wrote) or index (the name of a shared dedup index); "
                f"{given} was given"
            )
        if index is not None:
            index_path(index_root or default_index_root(), index)  # a bad name fails here
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise GristmillError(f"stage '{self.name}': shards must be an int >= 1, got {shards!r}")
        self.duplicates_path, self.id_field = duplicates_path, id_field
        self.index, self.index_root, self.index_owner = index, index_root, index_owner
        self.text_field, self.hash_field, self.normalize = text_field, hash_field, normalize
        self.shards = shards
        self._kept_for: dict[str, str] | None = None
        self._index: DedupIndex | None = None

    def inputs(self) -> tuple[list[str], list[str]]:
        """The id column, and with an index the text to hash (with `hash_field`, either that
        column or the text will do, which `process` checks)."""
        if self.index is None or self.hash_field is not None:
            return [], [self.id_field]
        return [], [self.id_field, self.text_field]

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Load the duplicate ids, or open the index."""
        if self.index is not None:
            root = index_path(self.index_root or default_index_root(), self.index)
            self._index = DedupIndex(root, self.shards)
            return
        assert self.duplicates_path is not None  # __init__ insists on one of the two
        files = fs.expand_paths(self.duplicates_path, [".parquet"], self.name)
        tables = [pq.read_table(pa.BufferReader(fs.read_bytes(f))) for f in files]
        merged = pa.concat_tables(tables) if tables else pa.table({"id": [], "kept_id": []})
        self._kept_for = dict(
            zip(merged.column("id").to_pylist(), merged.column("kept_id").to_pylist(), strict=True)
        )

    def teardown(self) -> None:
        """Let go of the duplicate ids or the index's cached shards."""
        self._kept_for, self._index = None, None

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch without its duplicates."""
        if self._kept_for is None and self._index is None:
            self.setup()
        if self._index is not None:
            return self._remove_claimed(task, self._index)
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

    def _remove_claimed(self, task: DocumentBatch, index: DedupIndex) -> DocumentBatch:
        """Claim every document's hash; keep the owners, record the others as duplicates."""
        table = task.to_pyarrow()
        ids = [str(i) for i in table.column(self.id_field).to_pylist()]
        owner = f"{self.index_owner}/{task.task_id}"
        source = source_of(task)
        claims = [
            Claim(hash=h, doc_id=i, owner=owner, source=source)
            for h, i in zip(self._hashes(table), ids, strict=True)
        ]
        owners = index.claim(claims)
        keep = [won is mine for won, mine in zip(owners, claims, strict=True)]
        # Keep the batch's other metadata (its source files); drops are settled by the executor.
        metadata = {k: v for k, v in task._metadata.items() if k != DROPS_KEY}
        kept = table if all(keep) else table.filter(pa.array(keep, pa.bool_()))
        out = DocumentBatch(data=kept, _metadata=metadata)
        by_owner: dict[tuple[str, str], list[str]] = {}
        for won, mine, kept_it in zip(owners, claims, keep, strict=True):
            if not kept_it:
                by_owner.setdefault((won.doc_id, won.source), []).append(mine.doc_id)
        for (kept_id, kept_source), dropped in by_owner.items():
            record_drops(
                out,
                self.name,
                dropped,
                f"exact duplicate of {kept_id}",
                duplicate_of=kept_id,
                duplicate_source=kept_source,
            )
        return out

    def _hashes(self, table: pa.Table) -> list[str]:
        """Each document's hex hash: the hash column when there is one, else the text's MD5."""
        if self.hash_field is not None and self.hash_field in table.column_names:
            return [str(h).lower() for h in table.column(self.hash_field).to_pylist()]
        if self.text_field not in table.column_names:
            wanted = " or ".join(repr(c) for c in (self.hash_field, self.text_field) if c)
            raise GristmillError(
                f"stage '{self.name}': the batch has no column {wanted} to hash; "
                f"set text_field (or hash_field) to a column it has: {table.column_names}"
            )
        prepare = normalize_text if self.normalize else (lambda t: t)
        return [
            hashlib.md5(prepare(t).encode(), usedforsecurity=False).hexdigest()
            for t in table.column(self.text_field).to_pylist()
        ]
