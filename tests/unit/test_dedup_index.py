"""The shared exact-dedup index: the first claim of a hash owns it for ever, across instances,
processes and runs; a retried task keeps its documents; and ExactDuplicateRemoval against it
drops and explains exactly the later copies."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill import DocumentBatch, LocalExecutor, Pipeline, fs
from gristmill.errors import GristmillError, StageParamsError
from gristmill.stages.deduplication.exact import ExactDuplicateHasher, ExactDuplicateRemoval
from gristmill.stages.deduplication.index import (
    Claim,
    DedupIndex,
    _ShardView,
    default_index_root,
    index_path,
)
from gristmill.stages.text.io import JsonlReader, JsonlWriter
from gristmill.tasks import iter_drops


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _hash_in_shard(shard: int, n: int) -> str:
    """A hash whose first 8 hex digits are `shard` (so it lies in that shard when the index
    has more shards than `shard`), made distinct by `n`."""
    return f"{shard:08x}{n:024x}"


# -- the index -------------------------------------------------------------------------------


def test_first_claim_of_a_hash_owns_it_across_instances(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    first, second = DedupIndex(root, shards=4), DedupIndex(root, shards=4)
    a = Claim(_md5("alpha"), "a0", "job-1/t1", "a.jsonl")
    b = Claim(_md5("alpha"), "b0", "job-2/t9", "b.jsonl")
    c = Claim(_md5("gamma"), "b1", "job-2/t9", "b.jsonl")
    assert first.claim([a]) == [a]
    results = second.claim([b, c])
    assert results[0] == a
    assert results[1] is c
    # The first instance's cached view catches up with what the second wrote.
    assert first.lookup([_md5("alpha"), _md5("gamma"), _md5("never")]) == {
        _md5("alpha"): a,
        _md5("gamma"): c,
    }
    assert DedupIndex(root).count() == 2


def test_retried_owner_keeps_its_documents(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    claims = [Claim(_md5(t), f"d{i}", "job-1/t1", "a.jsonl") for i, t in enumerate("xyz")]
    assert DedupIndex(root).claim(claims) == claims
    retry = [Claim(c.hash, c.doc_id, c.owner, c.source) for c in claims]
    results = DedupIndex(root).claim(retry)
    assert all(r is c for r, c in zip(results, retry, strict=True))
    # Another owner with the same document ids is not the same claimant.
    other = [Claim(c.hash, c.doc_id, "job-2/t1", c.source) for c in claims]
    assert DedupIndex(root).claim(other) == claims
    assert sorted(os.listdir(tmp_path / "idx" / f"shard={DedupIndex(root).shard_of(claims[0].hash)}")) == ["0000000000.parquet"]  # fmt: skip


def test_first_of_equal_hashes_in_one_call_wins_and_the_others_get_it(tmp_path: Path) -> None:
    index = DedupIndex(str(tmp_path / "idx"), shards=2)
    h = _md5("same")
    a, b, c = (Claim(h, d, "o/t", "s") for d in ("a", "b", "c"))
    results = index.claim([a, b, c])
    assert results[0] is a
    assert results[1] is a
    assert results[2] is a
    # Two inputs with the same id and owner (a repeated row): only the first owns the hash.
    again = [Claim(h, "a", "o/t", "s"), Claim(h, "a", "o/t", "s")]
    results = index.claim(again)
    assert results[0] is again[0]
    assert results[1] is again[0]


def test_claims_land_in_one_segment_per_commit_with_the_documented_layout(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    index = DedupIndex(str(root), shards=4)
    assert (root / "index.json").read_bytes() == b'{"format": 1, "shards": 4}\n'
    h1, h2 = _hash_in_shard(1, 1), _hash_in_shard(1, 2)
    index.claim([Claim(h1, "d1", "o/t1", "a.jsonl")])
    index.claim([Claim(h2, "d2", "o/t2", "b.jsonl"), Claim(h1, "d9", "o/t2", "b.jsonl")])
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "shard=1"]
    assert sorted(p.name for p in (root / "shard=1").iterdir()) == [
        "0000000000.parquet",
        "0000000001.parquet",
    ]
    second = pq.read_table(root / "shard=1" / "0000000001.parquet")
    assert second.schema == pa.schema(
        [
            ("hash", pa.string()),
            ("doc_id", pa.string()),
            ("owner", pa.string()),
            ("source", pa.string()),
        ]
    )
    assert second.to_pylist() == [
        {"hash": h2, "doc_id": "d2", "owner": "o/t2", "source": "b.jsonl"}
    ]


def test_a_writer_beaten_to_a_segment_commits_what_is_still_new_in_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "idx")
    ours, rival = DedupIndex(root, shards=1), DedupIndex(root, shards=1)
    shared, own = _md5("shared"), _md5("own")
    theirs = Claim(shared, "r0", "rival/t", "r.jsonl")
    write_once = fs.write_once

    def beaten_once(path: str, payload: bytes, fail_half_way: bool = False) -> bytes:
        monkeypatch.setattr(fs, "write_once", write_once)
        rival.claim([theirs])  # lands in segment 0 between our read and our write
        return write_once(path, payload)

    monkeypatch.setattr(fs, "write_once", beaten_once)
    mine = [Claim(shared, "o0", "ours/t", "o.jsonl"), Claim(own, "o1", "ours/t", "o.jsonl")]
    results = ours.claim(mine)
    assert results[0] == theirs
    assert results[1] is mine[1]
    segments = sorted((tmp_path / "idx" / "shard=0").glob("*.parquet"))
    assert [pq.read_table(p)["doc_id"].to_pylist() for p in segments] == [["r0"], ["o1"]]


def test_shard_count_is_fixed_at_creation_and_reused(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    assert DedupIndex(root, shards=4).shards == 4
    reopened = DedupIndex(root, shards=16)
    assert reopened.shards == 4
    h = _hash_in_shard(6, 0)
    assert reopened.shard_of(h) == 2
    reopened.claim([Claim(h, "d", "o/t", "s")])
    assert os.listdir(tmp_path / "idx" / "shard=2") == ["0000000000.parquet"]
    assert DedupIndex(root).lookup([h]) == {h: Claim(h, "d", "o/t", "s")}


def test_unusable_index_headers_and_hashes_are_refused_naming_the_index(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    root.mkdir()
    (root / "index.json").write_text('{"format": 2, "shards": 4}\n')
    with pytest.raises(GristmillError) as caught:
        DedupIndex(str(root))
    assert str(caught.value) == f"dedup index {root}: format 2 in {root}/index.json, this gristmill reads format 1; upgrade gristmill or use another index"  # fmt: skip
    index = DedupIndex(str(tmp_path / "other"))
    with pytest.raises(GristmillError) as caught:
        index.claim([Claim("0x12abcdef", "d", "o", "s")])
    assert str(caught.value) == f"dedup index {tmp_path}/other: '0x12abcdef' is not a hash; hashes are at least 8 lowercase hex digits (an MD5 hexdigest, say)"  # fmt: skip


class _CountingIndex(DedupIndex):
    """Records the most shard views held at any moment."""

    most_views = 0

    def _view(self, shard: int) -> _ShardView:
        view = super()._view(shard)
        self.most_views = max(self.most_views, self.views_in_memory)
        return view


def test_cached_shard_views_stay_within_the_bound_and_results_stay_right(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    small = _CountingIndex(root, shards=8, cached_shards=2)
    expected: dict[str, Claim] = {}
    for round_ in range(3):
        claims = [
            Claim(_hash_in_shard(s, n), f"r{round_}-s{s}-n{n}", f"o/t{round_}", "src")
            for s in range(8)
            for n in range(round_ + 2)  # rounds overlap: n < round_ + 1 was claimed before
        ]
        results = small.claim(claims)
        for claim, result in zip(claims, results, strict=True):
            assert result == expected.setdefault(claim.hash, claim)
        assert small.views_in_memory <= 2
    assert small.most_views == 2
    assert small.lookup(list(expected)) == expected
    assert small.count() == len(expected) == 8 * 4
    assert small.views_in_memory <= 2
    assert DedupIndex(root, cached_shards=64).lookup(list(expected)) == expected


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the index reads from now on (those that exist)."""
    read: list[str] = []
    real = fs.read_bytes

    def counted(path: str) -> bytes:
        payload = real(path)
        read.append(path)
        return payload

    monkeypatch.setattr(fs, "read_bytes", counted)
    return read


def test_a_batch_over_every_shard_rereads_no_shard_with_the_default_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch of a thousand documents touches all 256 shards; a cache smaller than that
    # evicted views on every batch and read each shard's whole history again.
    index = DedupIndex(str(tmp_path / "idx"))
    for batch in range(3):
        index.claim(
            [Claim(_hash_in_shard(s, batch), f"d{batch}-{s}", "o/t", "src") for s in range(256)]
        )
    read = _reads(monkeypatch)
    owners = index.claim([Claim(_hash_in_shard(s, 9), f"d9-{s}", "o/t", "src") for s in range(256)])
    assert [o.doc_id for o in owners] == [f"d9-{s}" for s in range(256)]
    assert read == []


def test_a_fresh_reader_of_a_long_shard_reads_its_newest_base_and_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "idx")
    writer = DedupIndex(root, shards=1)
    for n in range(150):  # 150 commits of one claim: bases at 64 and 128, a tail of 22
        writer.claim([Claim(_hash_in_shard(0, n), f"d{n}", f"o/t{n}", "src")])
    assert fs.exists(f"{root}/shard=0/base/0000000064.parquet")
    assert fs.exists(f"{root}/shard=0/base/0000000128.parquet")
    read = _reads(monkeypatch)
    fresh = DedupIndex(root, shards=1)
    wanted = [_hash_in_shard(0, n) for n in range(151)]
    found = fresh.lookup(wanted)
    assert sorted(c.doc_id for c in found.values()) == sorted(f"d{n}" for n in range(150))
    assert read == [  # (the header is read by write_once, not counted here)
        f"{root}/shard=0/base/0000000128.parquet",
        *(f"{root}/shard=0/{seq:010d}.parquet" for seq in range(128, 150)),
    ]
    # The base holds what the segments hold: a claim of an old hash still loses to its owner.
    [owner] = fresh.claim([Claim(_hash_in_shard(0, 3), "late", "o/late", "src")])
    assert owner == Claim(_hash_in_shard(0, 3), "d3", "o/t3", "src")


def test_a_missing_base_only_means_reading_more_segments(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    writer = DedupIndex(root, shards=1)
    for n in range(130):
        writer.claim([Claim(_hash_in_shard(0, n), f"d{n}", f"o/t{n}", "src")])
    os.remove(f"{root}/shard=0/base/0000000128.parquet")  # a writer died before writing it
    found = DedupIndex(root, shards=1).lookup([_hash_in_shard(0, n) for n in range(130)])
    assert len(found) == 130


def test_index_names_are_checked_before_they_choose_a_path(tmp_path: Path) -> None:
    assert index_path(str(tmp_path), "web-2024_q1") == f"{tmp_path}/web-2024_q1"
    assert index_path("s3://bucket/indexes/", "a") == "s3://bucket/indexes/a"
    for bad in ("../x", "", "Web", "-x", "a/b", "a" * 65, "x\n"):
        with pytest.raises(GristmillError) as caught:
            index_path(str(tmp_path), bad)
        assert str(caught.value) == f"dedup index name {bad!r} is not allowed: use 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"  # fmt: skip


def test_default_index_root_is_the_environment_or_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRISTMILL_INDEX_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_index_root() == f"{tmp_path}/.gristmill/indexes"
    monkeypatch.setenv("GRISTMILL_INDEX_ROOT", "s3://b/indexes")
    assert default_index_root() == "s3://b/indexes"


# -- racing processes ------------------------------------------------------------------------

_PROCESSES = 4
_ROUNDS = 25


def _race_keys(process: int, round_: int) -> list[int]:
    """Keys that overlap between processes: each round's shared keys in a process-specific
    order, plus two of the process's own."""
    shared = list(range(round_ * 12, round_ * 12 + 10))
    ordered = shared[process:] + shared[:process]
    return [*ordered, 10_000 + round_ * 100 + process * 2, 10_000 + round_ * 100 + process * 2 + 1]


def _race(root: str, process: int, barrier: Any, results: Any) -> None:
    """One racer: claims every round's keys right after the others are released with it."""
    index = DedupIndex(root, shards=2, cached_shards=1 + process % 2)
    answers = []
    for round_ in range(_ROUNDS):
        claims = [Claim(_md5(f"key-{k}"), f"p{process}-k{k}", f"proc{process}", f"f{process}") for k in _race_keys(process, round_)]  # fmt: skip
        barrier.wait(timeout=60)
        owners = index.claim(claims)
        answers.extend(
            (c.hash, c.doc_id, o.doc_id, o is c) for c, o in zip(claims, owners, strict=True)
        )
    results.put((process, answers))


def test_two_processes_claiming_the_same_new_hashes_keep_exactly_one_each(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    DedupIndex(root, shards=2)  # the header first, so racers never differ on the shard count
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(_PROCESSES), context.Queue()
    racers = [
        context.Process(target=_race, args=(root, p, barrier, results)) for p in range(_PROCESSES)
    ]
    for racer in racers:
        racer.start()
    answers = dict(results.get(timeout=60) for _ in racers)
    for racer in racers:
        racer.join(timeout=30)
        assert racer.exitcode == 0
    # Every hash appears in exactly one segment row: one owner each.
    rows = pa.concat_tables(
        pq.read_table(p) for p in sorted((tmp_path / "idx").glob("shard=*/*.parquet"))
    ).to_pylist()
    per_hash: dict[str, list[str]] = {}
    for row in rows:
        per_hash.setdefault(row["hash"], []).append(row["doc_id"])
    assert all(len(ids) == 1 for ids in per_hash.values())
    expected_keys = {k for p in range(_PROCESSES) for r in range(_ROUNDS) for k in _race_keys(p, r)}
    assert len(per_hash) == len(expected_keys)
    # Every process's answers agree with the final index, and it kept exactly what it owns.
    final = DedupIndex(root).lookup(per_hash)
    for process in range(_PROCESSES):
        for doc_hash, doc_id, owner_id, won in answers[process]:
            assert owner_id == final[doc_hash].doc_id
            assert won == (final[doc_hash].doc_id == doc_id)
    # The shared keys were really contended: several processes own some of them.
    winners = {final[_md5(f"key-{k}")].owner for r in range(_ROUNDS) for k in range(r * 12, r * 12 + 10)}  # fmt: skip
    assert len(winners) > 1


# -- the stage -------------------------------------------------------------------------------


def _batch(task_id: str, source: list[str], docs: list[tuple[str, str]]) -> DocumentBatch:
    ids, texts = [d[0] for d in docs], [d[1] for d in docs]
    return DocumentBatch(
        task_id=task_id,
        data=pa.table({"id": ids, "text": texts}),
        _metadata={"source_files": source},
    )


def _run(stage: ExactDuplicateRemoval, batch: DocumentBatch) -> tuple[list[str], list[dict[str, Any]]]:  # fmt: skip
    [out] = Pipeline("dedup", [stage]).run(initial_tasks=[batch])
    return out.to_pyarrow()["id"].to_pylist(), list(iter_drops(out._metadata.get("drops", [])))


def test_a_duplicate_of_an_earlier_batch_and_of_its_own_batch_is_dropped_and_explained(
    tmp_path: Path,
) -> None:
    stage = ExactDuplicateRemoval(index="web", index_root=str(tmp_path), index_owner="job-1")
    first = _batch("t1", ["in/a.jsonl"], [("a0", "alpha"), ("a1", "beta")])
    assert _run(stage, first) == (["a0", "a1"], [])
    second = _batch(
        "t2", ["in/b.jsonl"], [("b0", "beta"), ("b1", "delta"), ("b2", "delta"), ("b3", "beta")]
    )
    kept, drops = _run(stage, second)
    assert kept == ["b1"]
    assert drops == [
        {"id": "b0", "stage": "exact_duplicate_removal", "reason": "exact duplicate of a1", "duplicate_of": "a1", "duplicate_source": "in/a.jsonl"},
        {"id": "b3", "stage": "exact_duplicate_removal", "reason": "exact duplicate of a1", "duplicate_of": "a1", "duplicate_source": "in/a.jsonl"},
        {"id": "b2", "stage": "exact_duplicate_removal", "reason": "exact duplicate of b1", "duplicate_of": "b1", "duplicate_source": "in/b.jsonl"},
    ]  # fmt: skip
    assert DedupIndex(f"{tmp_path}/web").lookup([_md5("delta")]) == {
        _md5("delta"): Claim(_md5("delta"), "b1", "job-1/t2", "in/b.jsonl")
    }


def test_the_same_task_run_twice_keeps_the_same_documents(tmp_path: Path) -> None:
    def stage(owner: str) -> ExactDuplicateRemoval:
        return ExactDuplicateRemoval(index="web", index_root=str(tmp_path), index_owner=owner)

    def batch() -> DocumentBatch:
        return _batch("t1", ["a.jsonl"], [("a0", "x"), ("a1", "y"), ("a2", "x")])

    once = _run(stage("job-1"), batch())
    assert once[0] == ["a0", "a1"]
    assert _run(stage("job-1"), batch()) == once  # a retry, on a fresh worker
    # Another job reading the same file is not the same claimant: everything is a duplicate.
    kept, drops = _run(stage("job-2"), batch())
    assert kept == []
    assert [(d["id"], d["duplicate_of"]) for d in drops] == [("a0", "a0"), ("a2", "a0"), ("a1", "a1")]  # fmt: skip


def test_source_names_the_batch_files_or_its_task(tmp_path: Path) -> None:
    stage = ExactDuplicateRemoval(index="web", index_root=str(tmp_path), index_owner="j")
    _run(stage, _batch("t1", ["a.jsonl", "b.jsonl"], [("a0", "one")]))
    _run(stage, _batch("t2", [], [("b0", "two")]))
    found = DedupIndex(f"{tmp_path}/web").lookup([_md5("one"), _md5("two")])
    assert [found[_md5(t)].source for t in ("one", "two")] == ["a.jsonl,b.jsonl", "t2"]


def test_hash_field_is_used_when_present_and_the_text_otherwise(tmp_path: Path) -> None:
    stage = ExactDuplicateRemoval(
        index="web", index_root=str(tmp_path), index_owner="j", hash_field="_hash"
    )
    table = pa.table({"id": ["a0", "a1"], "text": ["x", "y"], "_hash": ["AB" * 16, "ab" * 16]})
    [out] = Pipeline("d", [stage]).run(initial_tasks=[DocumentBatch(task_id="t1", data=table)])
    assert out.to_pyarrow()["id"].to_pylist() == ["a0"]  # hex compared in lower case
    # Without the column, the MD5 of the text, as ExactDuplicateHasher makes it.
    assert _run(stage, _batch("t2", ["b.jsonl"], [("b0", "y"), ("b1", "z")]))[0] == ["b0", "b1"]
    hashed = Pipeline("h", [ExactDuplicateHasher()]).run(
        initial_tasks=[_batch("t3", ["c.jsonl"], [("c0", "z"), ("c1", "w")])]
    )
    assert _run(stage, hashed[0])[0] == ["c1"]


def test_normalize_catches_case_and_space_variants(tmp_path: Path) -> None:
    stage = ExactDuplicateRemoval(
        index="web", index_root=str(tmp_path), index_owner="j", normalize=True
    )
    kept, drops = _run(stage, _batch("t1", ["a"], [("a0", "Alpha  beta"), ("a1", " alpha beta")]))
    assert kept == ["a0"]
    assert [d["reason"] for d in drops] == ["exact duplicate of a0"]


def test_exactly_one_of_duplicates_path_and_index_is_required(tmp_path: Path) -> None:
    for kwargs, given in (({}, "neither"), ({"duplicates_path": str(tmp_path), "index": "x"}, "both")):  # fmt: skip
        with pytest.raises(GristmillError) as caught:
            ExactDuplicateRemoval(**kwargs)
        assert str(caught.value) == f"stage 'exact_duplicate_removal': give exactly one of duplicates_path (the lists DuplicateFinder wrote) or index (the name of a shared dedup index); {given} was given"  # fmt: skip
    with pytest.raises(GristmillError, match=r"dedup index name '\.\./x' is not allowed"):
        ExactDuplicateRemoval(index="../x")


def test_the_stage_with_an_index_round_trips_through_a_spec(tmp_path: Path) -> None:
    stage = ExactDuplicateRemoval(index="web", index_root=str(tmp_path), index_owner="job-1")
    spec = Pipeline("p", [stage]).to_spec()
    assert spec["stages"] == [
        {
            "stage": "ExactDuplicateRemoval",
            "params": {"index": "web", "index_root": str(tmp_path), "index_owner": "job-1"},
        }
    ]
    rebuilt = Pipeline.from_spec(spec).stages[0]
    assert isinstance(rebuilt, ExactDuplicateRemoval)
    assert (rebuilt.index, rebuilt.index_owner, rebuilt.duplicates_path) == ("web", "job-1", None)
    bad = {"name": "p", "stages": [{"stage": "ExactDuplicateRemoval", "params": {"index": "web", "shards": "many"}}]}  # fmt: skip
    with pytest.raises(
        StageParamsError, match=r"stage #1 'ExactDuplicateRemoval': bad params: shards: "
    ):
        Pipeline.from_spec(bad)
    neither = {"name": "p", "stages": [{"stage": "ExactDuplicateRemoval", "params": {}}]}
    with pytest.raises(StageParamsError, match=r"give exactly one of duplicates_path"):
        Pipeline.from_spec(neither)


# -- through the executor --------------------------------------------------------------------


def _write_jsonl(path: Path, docs: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))


def _kept_ids(directory: Path) -> list[str]:
    return sorted(
        json.loads(line)["id"]
        for p in sorted(directory.glob("*.jsonl"))
        for line in p.read_text().splitlines()
    )


def test_a_backfill_run_dedups_against_what_an_earlier_run_kept(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "in" / "a.jsonl", [("a0", "alpha"), ("a1", "beta"), ("a2", "alpha")])
    _write_jsonl(tmp_path / "in" / "b.jsonl", [("b0", "beta"), ("b1", "gamma")])
    _write_jsonl(tmp_path / "later" / "c.jsonl", [("c0", "gamma"), ("c1", "delta")])
    indexes = str(tmp_path / "indexes")

    def run(source: str, owner: str, out: str) -> list[dict[str, Any]]:
        stages = [
            JsonlReader(str(tmp_path / source)),
            ExactDuplicateRemoval(index="corpus", index_root=indexes, index_owner=owner),
            JsonlWriter(str(tmp_path / out)),
        ]
        outputs = Pipeline("dedup", stages).run(LocalExecutor())
        return sorted(
            (r for t in outputs for r in iter_drops(t._metadata.get("drops", []))),
            key=lambda r: r["id"],
        )

    drops = run("in", "job-1", "out1")
    # One task per file, in file order: a.jsonl claims first.
    assert _kept_ids(tmp_path / "out1") == ["a0", "a1", "b1"]
    assert [(d["id"], d["reason"], d["duplicate_source"]) for d in drops] == [
        ("a2", "exact duplicate of a0", f"{tmp_path}/in/a.jsonl"),
        ("b0", "exact duplicate of a1", f"{tmp_path}/in/a.jsonl"),
    ]
    drops = run("later", "backfill-1", "out2")
    assert _kept_ids(tmp_path / "out2") == ["c1"]
    assert [(d["id"], d["duplicate_of"], d["duplicate_source"]) for d in drops] == [
        ("c0", "b1", f"{tmp_path}/in/b.jsonl")
    ]
    assert DedupIndex(f"{indexes}/corpus").count() == 4
