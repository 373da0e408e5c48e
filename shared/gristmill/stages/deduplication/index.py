"""`DedupIndex`: a persistent, shared index of the hash of every document kept so far.

Several workers, jobs and runs may share one index: the first committed claim of a hash owns it
for ever, so a document seen again later, anywhere, is known as a duplicate of the first one.

Layout under the index's root (a local path or an fsspec URL):

    root/index.json                      {"format": 1, "shards": 256}, written once
    root/shard=<n>/<seq:010d>.parquet    segment `seq` of shard n: columns hash, doc_id,
                                         owner, source (strings); seq counts from 0
    root/shard=<n>/base/<seq:010d>.parquet
                                         a base: every claim of segments 0 .. seq-1, one
                                         row per hash, sorted by hash; seq a multiple of 64

The shard of a hash is its first 8 hex digits, as an integer, modulo the shard count. Each
shard is an append-only log: a writer reads every segment, then writes the next one with the
claims still new, with `gristmill.fs.write_once`. When another writer got that segment first,
it reads theirs, drops the claims theirs settled, and tries the one after. So two workers
inserting the same new hash at once keep exactly one claim of it.

That needs a filesystem on which `fs.write_once` is atomic: local disks and POSIX shared
filesystems (a hard link to a complete file). On object stores (`s3://`, ...) two concurrent
writers of one segment may both believe they won; one of them is then wrong about the hashes
it claimed. Segments are small and many (one per commit); compacting them is future work.

A shard grows by one segment per commit that touches it, and a batch of a thousand documents
touches every shard of 256. So that a reader new to a shard (a restarted worker, another job)
does not read its whole history file by file, the writer of every 64th segment also writes a
base: the shard's claims up to there, in one file. A reader starts from the newest base it
finds (probing 64, 128, 256, ... then bisecting) and reads only the segments after it. A base
holds exactly what its segments hold and its bytes are the same whoever writes it, so it is
written with `write_once` too, and a base that is missing (its writer died first) only means
reading more segments. Segments are kept: the files of a long-lived index grow in number;
pruning the ones below a base is future work.

Memory: at most `cached_shards` shard views are held, least recently used out first, so a
process holds about (index size x cached_shards / shards). The default holds them all: a
batch touches every shard, and a cache smaller than the shard count would read each evicted
shard again on every batch. An index is not thread-safe: use one per thread.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.errors import GristmillError

__all__ = ["Claim", "DedupIndex", "default_index_root", "index_path", "source_of"]

INDEX_FORMAT = 1
BASE_EVERY = 64  # segments between bases of a shard
_INDEX_FILE = "index.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{8,}")
_COLUMNS = ("hash", "doc_id", "owner", "source")
_SCHEMA = pa.schema([(name, pa.string()) for name in _COLUMNS])


@dataclass(frozen=True)
class Claim:
    """One document's claim of its hash: `owner` identifies the claimant across retries (a job
    and task id), `source` tells people where the document came from (its input file)."""

    hash: str
    doc_id: str
    owner: str
    source: str


@dataclass
class _ShardView:
    """What this process knows of one shard: its claims, and the first segment not read yet."""

    claims: dict[str, Claim] = field(default_factory=dict)
    next_seq: int = 0


def index_path(index_root: str, name: str) -> str:
    """Where the index called `name` lives under `index_root`; the name must be 1-64 of a-z,
    0-9, '_' and '-', starting with a letter or digit (so it never chooses another path)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise GristmillError(
            f"dedup index name {name!r} is not allowed: use 1-64 characters of a-z, 0-9, '_' "
            f"and '-', starting with a letter or digit"
        )
    return fs.join(index_root, name)


def source_of(task: Any) -> str:
    """Where a batch's documents came from, for people (a claim's `source`): its reader's
    file(s), else its task id."""
    files = [str(f) for f in task._metadata.get("source_files") or []]
    return ",".join(files) if files else str(task.task_id)


def default_index_root() -> str:
    """Where named indexes live: `$GRISTMILL_INDEX_ROOT`, else `.gristmill/indexes` under the
    current directory (absolute)."""
    return os.environ.get("GRISTMILL_INDEX_ROOT") or os.path.abspath(".gristmill/indexes")


class DedupIndex:
    """A sharded, append-only index of hash claims under `root` (see the module docstring).

    `shards` is fixed when the index is first created (in `root/index.json`); an existing index
    keeps its own count whatever is passed, and `self.shards` says which is in use.
    `cached_shards` bounds how many shard views stay in memory (all of them by default).
    """

    def __init__(self, root: str, shards: int = 256, cached_shards: int | None = None):
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise GristmillError(f"dedup index {root}: shards must be an int >= 1, got {shards!r}")
        if cached_shards is not None and cached_shards < 1:
            raise GristmillError(
                f"dedup index {root}: cached_shards must be >= 1, got {cached_shards!r}"
            )
        self.root = root
        self.shards = self._settle_shard_count(shards)
        self.cached_shards = self.shards if cached_shards is None else cached_shards
        self._views: OrderedDict[int, _ShardView] = OrderedDict()

    def _settle_shard_count(self, shards: int) -> int:
        """Write index.json if this is the first use of the index; the shard count it holds."""
        path = fs.join(self.root, _INDEX_FILE)
        ours = json.dumps({"format": INDEX_FORMAT, "shards": shards}).encode() + b"\n"
        stored = fs.write_once(path, ours)
        try:
            header = json.loads(stored)
            count, version = header["shards"], header["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GristmillError(
                f"dedup index {self.root}: {path} is not an index header ({exc}); "
                f"point the stage at another index, or remove this directory if it is no index"
            ) from exc
        if version != INDEX_FORMAT:
            raise GristmillError(
                f"dedup index {self.root}: format {version!r} in {path}, this gristmill reads "
                f"format {INDEX_FORMAT}; upgrade gristmill or use another index"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise GristmillError(f"dedup index {self.root}: bad shard count {count!r} in {path}")
        return count

    @property
    def views_in_memory(self) -> int:
        """How many shard views this process holds now (never more than `cached_shards`)."""
        return len(self._views)

    def shard_of(self, doc_hash: str) -> int:
        """The shard a hex hash belongs to: its first 8 hex digits modulo the shard count."""
        if not isinstance(doc_hash, str) or not _HASH.fullmatch(doc_hash):
            raise GristmillError(
                f"dedup index {self.root}: {doc_hash!r} is not a hash; hashes are at least "
                f"8 lowercase hex digits (an MD5 hexdigest, say)"
            )
        return int(doc_hash[:8], 16) % self.shards

    def claim(self, claims: list[Claim]) -> list[Claim]:
        """Claim each hash for its document; for each input, the owner of its hash afterwards.

        An input owns its hash exactly when the result at its position *is* that input: it
        claimed a new hash first, or the index already held a claim of the hash with the same
        `doc_id` and `owner` (a retried task keeps its documents). Of several inputs with one
        new hash, the first in list order wins; the others get the winner (an input, or the
        claim the index held). Only the shards these hashes live in are read and written.
        """
        by_shard: dict[int, list[int]] = {}
        for position, item in enumerate(claims):
            by_shard.setdefault(self.shard_of(item.hash), []).append(position)
        results: list[Claim | None] = [None] * len(claims)
        for shard in sorted(by_shard):
            firsts: dict[str, Claim] = {}
            for position in by_shard[shard]:
                firsts.setdefault(claims[position].hash, claims[position])
            owners = self._commit(shard, list(firsts.values()))
            represented: set[str] = set()
            for position in by_shard[shard]:
                item = claims[position]
                owner = owners[item.hash]
                mine = owner.doc_id == item.doc_id and owner.owner == item.owner
                if mine and item.hash not in represented:
                    # The first input that is the owner stands for it; later equal ones lose.
                    owner = owners[item.hash] = item
                    represented.add(item.hash)
                results[position] = owner
        return [r for r in results if r is not None]

    def lookup(self, hashes: Iterable[str]) -> dict[str, Claim]:
        """The claims the index holds of `hashes` (those never claimed are absent); writes
        nothing."""
        by_shard: dict[int, list[str]] = {}
        for doc_hash in hashes:
            by_shard.setdefault(self.shard_of(doc_hash), []).append(doc_hash)
        found: dict[str, Claim] = {}
        for shard, wanted in sorted(by_shard.items()):
            claims = self._view(shard).claims
            found.update({h: claims[h] for h in wanted if h in claims})
        return found

    def count(self) -> int:
        """How many hashes the index holds, over every shard (reads them all; shards not
        cached are read without being cached)."""
        total = 0
        for shard in range(self.shards):
            view = self._views.get(shard) or self._based(shard)
            self._refresh(shard, view)
            total += len(view.claims)
        return total

    def _commit(self, shard: int, wanted: list[Claim]) -> dict[str, Claim]:
        """Append the claims of `wanted` (distinct hashes of one shard) that are still new;
        the owner of each of their hashes afterwards."""
        view = self._view(shard)
        while True:
            new = [c for c in wanted if c.hash not in view.claims]
            if not new:
                return {c.hash: view.claims[c.hash] for c in wanted}
            ours = _encode(new)
            path = self._segment_path(shard, view.next_seq)
            stored = fs.write_once(path, ours)
            view.next_seq += 1
            # Equal bytes from another writer hold equal claims: winning or losing is the same.
            if stored == ours:
                _apply(view, new)
                if view.next_seq % BASE_EVERY == 0:  # the view is exactly segments < next_seq
                    fs.write_once(self._base_path(shard, view.next_seq), _encode_base(view))
                continue
            _apply(view, _decode(stored, path, self.root))
            # Others may have written more segments since: read them before trying again.
            self._refresh(shard, view)

    def _view(self, shard: int) -> _ShardView:
        """The shard's view, brought up to date, most recently used now; evicts the least
        recently used view beyond `cached_shards`."""
        view = self._views.pop(shard, None) or self._based(shard)
        self._refresh(shard, view)
        self._views[shard] = view
        while len(self._views) > self.cached_shards:
            self._views.popitem(last=False)
        return view

    def _refresh(self, shard: int, view: _ShardView) -> None:
        """Read the shard's segments from the first unseen one until one is missing."""
        while True:
            path = self._segment_path(shard, view.next_seq)
            try:
                payload = fs.read_bytes(path)
            except FileNotFoundError:
                return
            _apply(view, _decode(payload, path, self.root))
            view.next_seq += 1

    def _based(self, shard: int) -> _ShardView:
        """A new view of the shard from its newest base found (empty where it has none)."""
        view = _ShardView()
        seq = self._newest_base(shard)
        if seq:
            path = self._base_path(shard, seq)
            _apply(view, _decode(fs.read_bytes(path), path, self.root))
            view.next_seq = seq
        return view

    def _newest_base(self, shard: int) -> int:
        """The seq of a base of the shard, the newest where none is missing below it: 64, 128,
        256, ... are probed until one is absent, then the gap is bisected. 0: none found."""
        found, probe = 0, BASE_EVERY
        while fs.exists(self._base_path(shard, probe)):
            found, probe = probe, probe * 2
        low, high = found // BASE_EVERY, probe // BASE_EVERY  # low exists (or is 0), high not
        while high - low > 1:
            middle = (low + high) // 2
            if fs.exists(self._base_path(shard, middle * BASE_EVERY)):
                low = middle
            else:
                high = middle
        return low * BASE_EVERY

    def _segment_path(self, shard: int, seq: int) -> str:
        return fs.join(self.root, f"shard={shard}/{seq:010d}.parquet")

    def _base_path(self, shard: int, seq: int) -> str:
        return fs.join(self.root, f"shard={shard}/base/{seq:010d}.parquet")


def _apply(view: _ShardView, claims: list[Claim]) -> None:
    """Add a segment's claims to a view; a hash claimed in an earlier segment stays its
    owner's (it can appear twice only where two writers both won, on an object store)."""
    for item in claims:
        view.claims.setdefault(item.hash, item)


def _encode_base(view: _ShardView) -> bytes:
    """A view's claims as a base: sorted by hash, so that every writer writes the same bytes."""
    return _encode([view.claims[h] for h in sorted(view.claims)])


def _encode(claims: list[Claim]) -> bytes:
    columns = {name: [getattr(c, name) for c in claims] for name in _COLUMNS}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=_SCHEMA), sink)
    return bytes(sink.getvalue().to_pybytes())


def _decode(payload: bytes, path: str, root: str) -> list[Claim]:
    try:
        table = pq.read_table(pa.BufferReader(payload)).select(list(_COLUMNS))
    except (pa.ArrowException, KeyError) as exc:
        raise GristmillError(
            f"dedup index {root}: segment {path} is not a Parquet file of "
            f"{', '.join(_COLUMNS)} ({exc}); the index is damaged: restore it or start another"
        ) from exc
    rows = zip(*(table.column(name).to_pylist() for name in _COLUMNS), strict=True)
    return [Claim(*(str(v) for v in row)) for row in rows]
