"""Fuzzy deduplication: documents whose shingle sets are similar (MinHash + LSH).

Five steps, each an ordinary pipeline, so any executor runs them and no process holds the
corpus or all of its edges:

1. per batch: `MinHashStage` adds each document's MinHash signature (`minhash.signatures`) and
   `LSHStage` cuts it into bands and writes (band key, id) rows to one of `num_shards` bucket
   shards by key, so documents sharing a key land in the same shard;
2. per bucket shard: `BucketsToEdgesStage` links the documents of every bucket (key) with two
   or more members: each to the smallest id of the bucket, or, with `false_positive_check`,
   to the smallest id whose exact Jaccard similarity reaches `jaccard_threshold`. It writes
   each edge in both directions, partitioned by node (`node_partition`);
3. per node partition, in rounds: `ConnectedComponentsStage` (in `components`) propagates the
   smallest id of each component along the edges until no label changes;
4. per node partition: `IdentifyDuplicatesStage` lists every document whose component label
   is another document's id: that one, the smallest id of the component, is kept;
5. `FuzzyDuplicateRemoval` drops the listed documents from any later run over the same data.

`gristmill.workflows.FuzzyDeduplicationWorkflow` runs steps 1-4. The document kept in each
cluster is the one with the smallest id (string order), whichever executor ran the steps.

Incrementally, against a persistent index (`index=`, a `DedupIndex` whose hashes are band
keys): step 2 claims every band key of the batch in the index and links each document whose
key an earlier run claimed to that run's document (a node named `index_node(id, source)`,
which sorts before every document of the batch). A component that reaches an indexed
document keeps it, so every document of the batch in it is removed. For a continuous job,
`FuzzyDuplicateRemoval(index=...)` does the same in one pass per batch, greedily: a
document is dropped when any of its band keys was claimed by another document before it.
"""

from __future__ import annotations

import itertools
import json
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.errors import GristmillError
from gristmill.stages.base import ProcessingStage
from gristmill.stages.deduplication import minhash
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
    "BucketsToEdgesStage",
    "FuzzyDuplicateRemoval",
    "LSHStage",
    "MinHashStage",
    "index_node",
    "node_partition",
    "parse_index_node",
]

SIGNATURE_FIELD = "_minhash_signature"
# Index documents are graph nodes whose names sort before any document id (ids never start
# with NUL) and carry where the document came from.
_INDEX_MARK = "\x00"
_EDGE_SCHEMA = pa.schema([("u", pa.string()), ("v", pa.string())])
_SETTINGS_FILE = "fuzzy.json"


def index_node(doc_id: str, source: str) -> str:
    """The graph node standing for an indexed document of an earlier run."""
    return f"{_INDEX_MARK}{doc_id}{_INDEX_MARK}{source}"


def parse_index_node(node: str) -> tuple[str, str] | None:
    """(doc id, source) of an index node; None for a document of this run."""
    if not node.startswith(_INDEX_MARK):
        return None
    doc_id, _, source = node[1:].partition(_INDEX_MARK)
    return doc_id, source


def node_partition(node: str, partitions: int) -> int:
    """The partition of a graph node: CRC-32 of its UTF-8 bytes modulo `partitions`."""
    return zlib.crc32(node.encode()) % partitions


def shingling_of(char_ngrams: int | None, word_ngrams: int | None) -> minhash.Shingling:
    """Word shingles when `word_ngrams` is given, otherwise character shingles."""
    if word_ngrams is not None:
        return minhash.Shingling(word_ngrams=word_ngrams)
    return minhash.Shingling(char_ngrams=char_ngrams)


def key_shard(keys: np.ndarray, shards: int) -> np.ndarray:
    """The bucket shard of each band key: its top 32 bits modulo `shards` (the shard the key's
    16 hex digits have in a `DedupIndex` of as many shards)."""
    return ((keys >> np.uint64(32)) % np.uint64(shards)).astype(np.int64)


def hex_keys(keys: np.ndarray) -> list[str]:
    """Band keys as 16 lowercase hex digits (how a `DedupIndex` holds them)."""
    return [f"{int(k):016x}" for k in keys]


def _positive(stage: str, **values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GristmillError(f"stage '{stage}': {name} must be an int >= 1, got {value!r}")


def _column(table: pa.Table, name: str, stage: str, param: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise GristmillError(
            f"stage '{stage}': the batch has no column {name!r} ({param}); "
            f"it has {table.column_names}"
        )
    return table.column(name)


def _ids(table: pa.Table, id_field: str, stage: str) -> pa.ChunkedArray:
    ids = _column(table, id_field, stage, "id_field")
    if ids.null_count:
        raise GristmillError(f"stage '{stage}': {ids.null_count} document(s) have no {id_field!r}")
    return ids if pa.types.is_string(ids.type) else ids.cast(pa.string())


class MinHashStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds `signature_field`: each document's MinHash signature of `num_hashes` uint32 values
    over its `char_ngrams`-character shingles, or its `word_ngrams`-word shingles when that is
    given (see `minhash`). A document with no shingle gets a null signature: it is never a
    candidate duplicate."""

    name = "minhash"

    def __init__(
        self,
        text_field: str = "text",
        char_ngrams: int = 24,
        num_hashes: int = 260,
        seed: int = 42,
        word_ngrams: int | None = None,
        signature_field: str = SIGNATURE_FIELD,
    ):
        _positive(self.name, num_hashes=num_hashes)
        try:
            self._shingling = shingling_of(char_ngrams, word_ngrams)
        except ValueError as exc:
            raise GristmillError(f"stage '{self.name}': {exc}") from None
        self.text_field, self.char_ngrams, self.num_hashes = text_field, char_ngrams, num_hashes
        self.seed, self.word_ngrams, self.signature_field = seed, word_ngrams, signature_field
        self._a, self._b = minhash.permutations(num_hashes, seed)

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The signature column."""
        return [], [self.signature_field]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with its signatures."""
        table = task.to_pyarrow()
        texts = _column(table, self.text_field, self.name, "text_field")
        if texts.null_count:
            raise GristmillError(
                f"stage '{self.name}': {texts.null_count} document(s) have no "
                f"{self.text_field!r} text"
            )
        sigs, has = minhash.signatures(texts, self._shingling, self._a, self._b)
        values = pa.array(sigs.reshape(-1), pa.uint32())
        column = pa.FixedSizeListArray.from_arrays(values, self.num_hashes, mask=pa.array(~has))
        return DocumentBatch(
            task_id=task.task_id,
            data=table.append_column(self.signature_field, column),
            _metadata=task._metadata,
        )


class LSHStage(ProcessingStage[DocumentBatch, FileGroupTask]):
    """Writes the band keys of each batch's signatures, `num_bands` bands of
    `minhashes_per_band` values, to `path/shard=<s>/<task_id>.parquet` (columns key uint64,
    id string; with `false_positive_check`, also the document's shingle hashes, from
    `text_field` shingled as `MinHashStage` did)."""

    name = "lsh"

    def __init__(
        self,
        path: str,
        num_bands: int = 20,
        minhashes_per_band: int = 13,
        num_shards: int = 16,
        id_field: str = "id",
        signature_field: str = SIGNATURE_FIELD,
        false_positive_check: bool = False,
        text_field: str = "text",
        char_ngrams: int = 24,
        word_ngrams: int | None = None,
    ):
        _positive(
            self.name,
            num_bands=num_bands,
            minhashes_per_band=minhashes_per_band,
            num_shards=num_shards,
        )
        self.path, self.num_bands, self.minhashes_per_band = path, num_bands, minhashes_per_band
        self.num_shards, self.id_field, self.signature_field = num_shards, id_field, signature_field
        self.false_positive_check, self.text_field = false_positive_check, text_field
        self.char_ngrams, self.word_ngrams = char_ngrams, word_ngrams
        self._shingling = shingling_of(char_ngrams, word_ngrams)

    def inputs(self) -> tuple[list[str], list[str]]:
        """The id and signature columns (and the text, to check false positives)."""
        text = [self.text_field] if self.false_positive_check else []
        return [], [self.id_field, self.signature_field, *text]

    def process(self, task: DocumentBatch) -> FileGroupTask:
        """One Parquet file per bucket shard the batch has keys in."""
        # The id names files: never let one such as "../x" choose where they go.
        check_task_id(task.task_id, where=f"stage '{self.name}' was given a task whose")
        table = task.to_pyarrow()
        ids = _ids(table, self.id_field, self.name)
        column = _column(table, self.signature_field, self.name, "signature_field")
        present = pc.invert(pc.is_null(column)).to_numpy(zero_copy_only=False)
        width = self.num_bands * self.minhashes_per_band
        sigs = _signature_matrix(column.filter(present), self.name, width)
        keys = minhash.band_keys(sigs, self.num_bands, self.minhashes_per_band)
        docs = np.flatnonzero(present)
        rows = {
            "key": pa.array(keys.reshape(-1), pa.uint64()),
            "id": ids.take(pa.array(np.repeat(docs, self.num_bands))),
        }
        if self.false_positive_check:
            texts = _column(table, self.text_field, self.name, "text_field").to_pylist()
            shingles = [minhash.shingle_hashes(texts[d], self._shingling) for d in docs]
            lists = pa.array([s for s in shingles for _ in range(self.num_bands)], _SHINGLES)
            rows["shingles"] = lists
        # Where the documents came from, once per file rather than once per row.
        bucketed = pa.table(rows).replace_schema_metadata({"source": source_of(task)})
        shard_of = key_shard(keys.reshape(-1), self.num_shards)
        written = []
        for shard in np.unique(shard_of):
            part = bucketed.filter(pa.array(shard_of == shard))
            target = fs.join(self.path, f"shard={int(shard)}/{task.task_id}.parquet")
            with fs.atomic_write(target) as handle:
                pq.write_table(part, handle)
            written.append(target)
        return FileGroupTask(task_id=task.task_id, data=written, _metadata=_kept(task))


_SHINGLES = pa.list_(pa.uint64())


def _kept(task: Any) -> dict[str, Any]:
    """A task's metadata without its drop records (settled by the executor)."""
    return {k: v for k, v in task._metadata.items() if k != DROPS_KEY}


def _signature_matrix(column: pa.ChunkedArray, stage: str, width: int) -> np.ndarray:
    """The signatures as a (docs, hashes) uint32 array; at least `width` hashes."""
    if not pa.types.is_fixed_size_list(column.type) or column.type.value_type != pa.uint32():
        raise GristmillError(
            f"stage '{stage}': signatures must be fixed-size lists of uint32 (as MinHashStage "
            f"writes them), got {column.type}"
        )
    size = column.type.list_size
    if size < width:
        raise GristmillError(
            f"stage '{stage}': the bands need {width} hashes per signature, the signatures "
            f"have {size}; give MinHashStage num_hashes >= num_bands x minhashes_per_band"
        )
    flat = [c.flatten().to_numpy() for c in column.chunks if len(c)]
    values = np.concatenate(flat) if flat else np.zeros(0, np.uint32)
    return values.reshape(-1, size)


class BucketsToEdgesStage(ProcessingStage[FileGroupTask, FileGroupTask]):
    """Reads one bucket shard's files (the task's `shard` metadata names it) and writes the
    candidate-duplicate edges its buckets imply to `path/part=<p>/<task_id>.parquet`, both
    directions, partitioned over `num_partitions` by node.

    Each member of a bucket is linked to the bucket's smallest id; with `false_positive_check`,
    to the smallest id whose exact Jaccard similarity with it is at least `jaccard_threshold`
    (none: no edge). With `index`, every key is claimed in the shared index (owner
    `<index_owner>/<task id>`, so a retried task keeps its claims) and a member of a key
    another run claimed is linked to that run's document (`index_node`); those links are
    not checked for false positives (the index holds no shingles).
    """

    name = "buckets_to_edges"

    def __init__(
        self,
        path: str,
        num_partitions: int = 16,
        false_positive_check: bool = False,
        jaccard_threshold: float = 0.8,
        *,
        index: str | None = None,
        index_root: str | None = None,
        index_owner: str = "",
        index_shards: int = 256,
        index_settings: dict[str, Any] | None = None,
    ):
        _positive(self.name, num_partitions=num_partitions, index_shards=index_shards)
        if not 0.0 <= jaccard_threshold <= 1.0:
            raise GristmillError(
                f"stage '{self.name}': jaccard_threshold must be in [0, 1], got "
                f"{jaccard_threshold!r}"
            )
        if index is not None:
            index_path(index_root or default_index_root(), index)  # a bad name fails here
        self.path, self.num_partitions = path, num_partitions
        self.false_positive_check, self.jaccard_threshold = false_positive_check, jaccard_threshold
        self.index, self.index_root, self.index_owner = index, index_root, index_owner
        self.index_shards, self.index_settings = index_shards, index_settings
        self._index: DedupIndex | None = None

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Open the index, if there is one."""
        if self.index is not None:
            self._index = open_fuzzy_index(
                self.index, self.index_root, self.index_shards, self.index_settings or {}
            )

    def teardown(self) -> None:
        """Let go of the index's cached shards."""
        self._index = None

    def process(self, task: FileGroupTask) -> FileGroupTask:
        """The edges of one bucket shard."""
        check_task_id(task.task_id, where=f"stage '{self.name}' was given a task whose")
        if self.index is not None and self._index is None:
            self.setup()
        sources: list[str] = []
        table = pa.concat_tables([_read_bucket(f, sources) for f in task.data])
        keys = table.column("key").to_numpy()
        # Most keys have one member: find the buckets with several by the keys alone, and
        # look at the ids (and shingles) of their members only.
        order = np.argsort(keys, kind="stable")
        starts = np.ones(len(keys), np.bool_)
        starts[1:] = keys[order][1:] != keys[order][:-1]
        bucket = np.cumsum(starts) - 1
        shared = np.bincount(bucket)[bucket] >= 2
        members = table.take(pa.array(order[shared]))
        groups = bucket[shared]
        if self.false_positive_check:
            pairs = self._checked_pairs(members, groups)
        else:
            pairs = _star_pairs(members.column("id").to_pylist(), groups)
        if self._index is not None:
            pairs = pa.concat_tables([pairs, self._index_pairs(task, table, sources)])
        return FileGroupTask(task_id=task.task_id, data=self._write(task, pairs))

    def _checked_pairs(self, members: pa.Table, groups: np.ndarray) -> pa.Table:
        """Within each bucket, in id order, link each member to the first earlier one whose
        exact Jaccard similarity reaches the threshold."""
        ids = members.column("id").to_pylist()
        shingles = members.column("shingles")
        us: list[str] = []
        vs: list[str] = []
        for rows in _runs(groups):
            ranked = sorted(rows, key=lambda r: ids[r])
            sets = [np.asarray(shingles[r].values, np.uint64) for r in ranked]
            for i in range(1, len(ranked)):
                for j in range(i):
                    if ids[ranked[j]] == ids[ranked[i]]:
                        break  # one document twice (it came in twice): nothing to link
                    if minhash.exact_jaccard(sets[i], sets[j]) >= self.jaccard_threshold:
                        us.append(ids[ranked[j]])
                        vs.append(ids[ranked[i]])
                        break
        return pa.table({"u": pa.array(us, pa.string()), "v": pa.array(vs, pa.string())})

    def _index_pairs(self, task: FileGroupTask, table: pa.Table, sources: list[str]) -> pa.Table:
        """Claim every key, in key and id order (the smallest id claims a new key); link the
        members of keys an earlier run owns to its document."""
        assert self._index is not None
        table = table.sort_by([("key", "ascending"), ("id", "ascending")])
        owner = f"{self.index_owner}/{task.task_id}"
        ids = table.column("id").to_pylist()
        files = table.column("file").to_pylist()
        claims = [
            Claim(hash=h, doc_id=i, owner=owner, source=sources[f])
            for h, i, f in zip(hex_keys(table.column("key").to_numpy()), ids, files, strict=True)
        ]
        owners = self._index.claim(claims)
        us: list[str] = []
        vs: list[str] = []
        for won, doc_id in zip(owners, ids, strict=True):
            if won.owner != owner:
                us.append(doc_id)
                vs.append(index_node(won.doc_id, won.source))
        return pa.table({"u": pa.array(us, pa.string()), "v": pa.array(vs, pa.string())})

    def _write(self, task: FileGroupTask, pairs: pa.Table) -> list[str]:
        """Distinct edges, both directions, one file per node partition that has any."""
        both = pa.concat_tables([pairs, pairs.rename_columns(["v", "u"]).select(["u", "v"])]).cast(
            _EDGE_SCHEMA
        )
        both = (
            both.group_by(["u", "v"])
            .aggregate([])
            .sort_by([("u", "ascending"), ("v", "ascending")])
        )
        parts = np.array(
            [node_partition(u, self.num_partitions) for u in both.column("u").to_pylist()],
            np.int64,
        )
        written = []
        for part in np.unique(parts):
            target = fs.join(self.path, f"part={int(part)}/{task.task_id}.parquet")
            with fs.atomic_write(target) as handle:
                pq.write_table(both.filter(pa.array(parts == part)), handle)
            written.append(target)
        return written


def _runs(groups: np.ndarray) -> list[list[int]]:
    """Positions of each run of equal values in `groups` (which holds runs, in order)."""
    if not len(groups):
        return []
    cuts = [0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1).tolist(), len(groups)]
    return [list(range(a, b)) for a, b in itertools.pairwise(cuts)]


def _star_pairs(ids: list[str], groups: np.ndarray) -> pa.Table:
    """Each bucket's members linked to its smallest id."""
    us: list[str] = []
    vs: list[str] = []
    for rows in _runs(groups):
        anchor = min(ids[r] for r in rows)
        for r in rows:
            if ids[r] != anchor:
                us.append(anchor)
                vs.append(ids[r])
    return pa.table({"u": pa.array(us, pa.string()), "v": pa.array(vs, pa.string())})


def _read_bucket(path: str, sources: list[str]) -> pa.Table:
    """A bucket file's rows, with the position of its source in `sources` (appended) as
    column `file`."""
    table = pq.read_table(pa.BufferReader(fs.read_bytes(path)))
    metadata = table.schema.metadata or {}
    sources.append(metadata.get(b"source", b"").decode())
    column = pa.array(np.full(table.num_rows, len(sources) - 1, np.int32))
    return table.replace_schema_metadata(None).append_column("file", column)


def open_fuzzy_index(
    name: str, root: str | None, shards: int, settings: dict[str, Any]
) -> DedupIndex:
    """The named index, after checking that it holds band keys made with `settings` (the
    shingling, permutations and bands: keys made otherwise would never match). The first
    fuzzy user of an index records its settings there."""
    path = index_path(root or default_index_root(), name)
    index = DedupIndex(path, shards)
    ours = json.dumps(settings, sort_keys=True).encode() + b"\n"
    stored = fs.write_once(fs.join(path, _SETTINGS_FILE), ours)
    if json.loads(stored) != json.loads(ours):
        raise GristmillError(
            f"dedup index {name!r} holds fuzzy band keys made with {stored.decode().strip()}, "
            f"not {ours.decode().strip()}; use the same settings or another index"
        )
    return index


def fuzzy_settings(
    char_ngrams: int, word_ngrams: int | None, num_bands: int, rows: int, seed: int
) -> dict[str, Any]:
    """What band keys depend on, as recorded in a fuzzy index."""
    shingles = (
        {"word_ngrams": word_ngrams} if word_ngrams is not None else {"char_ngrams": char_ngrams}
    )
    return {**shingles, "num_bands": num_bands, "minhashes_per_band": rows, "seed": seed}


class FuzzyDuplicateRemoval(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Drops fuzzy duplicates, recording each: those `IdentifyDuplicatesStage` listed under
    `duplicates_path`, or, with `index`, in one pass per batch: every document with a band key
    another document claimed before it, in this batch, an earlier one, or another job sharing
    the index. Give exactly one of the two.

    The index form computes the signatures itself (`char_ngrams` / `word_ngrams`,
    `num_bands` x `minhashes_per_band`, `seed`, as `FuzzyDeduplicationWorkflow` takes them)
    and claims every key of every document, kept or not, so a later document near one that
    was itself dropped is dropped too. It is greedy where the workflow is exact: a document
    that joins two earlier clusters is dropped, but the clusters are not merged after the
    fact. Claims are owned by `<index_owner>/<task id>`, so a retried task keeps its
    documents.
    """

    name = "fuzzy_duplicate_removal"

    def __init__(
        self,
        duplicates_path: str | None = None,
        id_field: str = "id",
        *,
        index: str | None = None,
        index_root: str | None = None,
        index_owner: str = "",
        text_field: str = "text",
        char_ngrams: int = 24,
        word_ngrams: int | None = None,
        num_bands: int = 20,
        minhashes_per_band: int = 13,
        seed: int = 42,
        shards: int = 256,
    ):
        if (duplicates_path is None) == (index is None):
            given = "both" if duplicates_path is not None else "neither"
            raise GristmillError(
                f"stage '{self.name}': give exactly one of duplicates_path (the lists "
                f"IdentifyDuplicatesStage wrote) or index (the name of a shared dedup index); "
                f"{given} was given"
            )
        if index is not None:
            index_path(index_root or default_index_root(), index)  # a bad name fails here
        _positive(
            self.name, num_bands=num_bands, minhashes_per_band=minhashes_per_band, shards=shards
        )
        self.duplicates_path, self.id_field = duplicates_path, id_field
        self.index, self.index_root, self.index_owner = index, index_root, index_owner
        self.text_field, self.char_ngrams, self.word_ngrams = text_field, char_ngrams, word_ngrams
        self.num_bands, self.minhashes_per_band = num_bands, minhashes_per_band
        self.seed, self.shards = seed, shards
        self._shingling = shingling_of(char_ngrams, word_ngrams)
        self._listed: dict[str, tuple[str, str | None]] | None = None
        self._index: DedupIndex | None = None

    def inputs(self) -> tuple[list[str], list[str]]:
        """The id column, and with an index the text."""
        return [], [self.id_field] if self.index is None else [self.id_field, self.text_field]

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Load the duplicate lists, or open the index."""
        if self.index is not None:
            settings = fuzzy_settings(
                self.char_ngrams,
                self.word_ngrams,
                self.num_bands,
                self.minhashes_per_band,
                self.seed,
            )
            self._index = open_fuzzy_index(self.index, self.index_root, self.shards, settings)
            return
        assert self.duplicates_path is not None  # __init__ insists on one of the two
        self._listed = load_duplicates(self.duplicates_path, self.name)

    def teardown(self) -> None:
        """Let go of the lists or the index's cached shards."""
        self._listed, self._index = None, None

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch without its duplicates."""
        if self._listed is None and self._index is None:
            self.setup()
        table = task.to_pyarrow()
        ids = _ids(table, self.id_field, self.name).to_pylist()
        if self._index is not None:
            dropped = self._claimed(task, table, ids, self._index)
        else:
            listed = self._listed or {}
            dropped = {i: listed[i] for i in ids if i in listed}
        metadata = _kept(task)
        keep = pa.array([i not in dropped for i in ids], pa.bool_())
        out = DocumentBatch(data=table if not dropped else table.filter(keep), _metadata=metadata)
        by_kept: dict[tuple[str, str | None], list[str]] = {}
        for doc_id in ids:
            if doc_id in dropped:
                by_kept.setdefault(dropped[doc_id], []).append(doc_id)
        for (kept, source), group in by_kept.items():
            record_drops(
                out,
                self.name,
                group,
                f"fuzzy duplicate of {kept}",
                duplicate_of=kept,
                duplicate_source=source,
            )
        return out

    def _claimed(
        self, task: DocumentBatch, table: pa.Table, ids: list[str], index: DedupIndex
    ) -> dict[str, tuple[str, str | None]]:
        """Claim every band key of every document; those with a key another owns, and whom."""
        texts = _column(table, self.text_field, self.name, "text_field")
        a, b = minhash.permutations(self.num_bands * self.minhashes_per_band, self.seed)
        sigs, has = minhash.signatures(texts, self._shingling, a, b)
        keys = minhash.band_keys(sigs, self.num_bands, self.minhashes_per_band)
        owner = f"{self.index_owner}/{task.task_id}"
        source = source_of(task)
        docs = np.flatnonzero(has)
        claims = [
            Claim(hash=h, doc_id=ids[d], owner=owner, source=source)
            for d in docs
            for h in hex_keys(keys[d])
        ]
        owners = index.claim(claims)
        dropped: dict[str, tuple[str, str | None]] = {}
        for won, mine in zip(owners, claims, strict=True):
            if mine.doc_id not in dropped and (won.doc_id, won.owner) != (mine.doc_id, owner):
                dropped[mine.doc_id] = (won.doc_id, won.source)
        return dropped


def load_duplicates(path: str, stage: str) -> dict[str, tuple[str, str | None]]:
    """id -> (kept id, kept document's source or None) from the lists under `path`."""
    files = fs.expand_paths(path, [".parquet"], stage)
    listed: dict[str, tuple[str, str | None]] = {}
    for name in files:
        table = pq.read_table(pa.BufferReader(fs.read_bytes(name)))
        sources = (
            table.column("kept_source").to_pylist()
            if "kept_source" in table.column_names
            else [None] * table.num_rows
        )
        for doc_id, kept, source in zip(
            table.column("id").to_pylist(),
            table.column("kept_id").to_pylist(),
            sources,
            strict=True,
        ):
            listed[doc_id] = (kept, source or None)
    return listed
