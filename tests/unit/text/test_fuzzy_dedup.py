"""Fuzzy deduplication (MinHash + LSH + connected components): quality against exact Jaccard,
exact outputs on small cases, the distributed components against union-find, incremental runs
against a batch run, and bad input."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill import DocumentBatch, LocalExecutor, Pipeline
from gristmill.errors import GristmillError
from gristmill.stages.deduplication import minhash
from gristmill.stages.deduplication.components import ConnectedComponentsStage
from gristmill.stages.deduplication.fuzzy import (
    FuzzyDuplicateRemoval,
    MinHashStage,
    index_node,
    node_partition,
)
from gristmill.stages.registry import get_stage_class
from gristmill.stages.text.io import JsonlReader, JsonlWriter
from gristmill.tasks import FileGroupTask, iter_drops
from gristmill.workflows import FuzzyDeduplicationWorkflow

SAMPLE = Path(__file__).parents[3] / "examples" / "data"
FILLERS = ["the", "a", "new", "old", "very", "also", "then", "often", "more", "data"]


def _prose() -> list[dict[str, str]]:
    """The sample corpus's prose documents (its deliberately bad ones left out: they are
    boilerplate pages that near-duplicate each other below the threshold)."""
    docs = []
    for path in sorted(SAMPLE.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            paragraphs = row["text"].split("\n\n")
            if len(row["text"].split()) >= 60 and all(
                p.strip()[-1:] in ".?!" and "\n" not in p.strip() for p in paragraphs
            ):
                docs.append(row)
    return docs


def _edit(rng: random.Random, text: str, fraction: float) -> str:
    """A light edit: about `fraction` of the words deleted, inserted, replaced or swapped."""
    words = text.split(" ")
    for _ in range(max(1, round(len(words) * fraction))):
        at = rng.randrange(len(words) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            del words[at]
        elif kind == 1:
            words.insert(at, rng.choice(FILLERS))
        elif kind == 2:
            words[at] = rng.choice(FILLERS)
        else:
            words[at], words[at + 1] = words[at + 1], words[at]
    return " ".join(words)


def _planted(seed: int, copies: int) -> list[dict[str, str]]:
    """The prose documents and `copies` light edits of randomly chosen ones (some edited
    twice), ids `near-NNNN`."""
    rng = random.Random(seed)
    docs = _prose()
    planted = []
    for n in range(copies):
        source = rng.choice(docs + planted) if n % 5 == 4 and planted else rng.choice(docs)
        text = _edit(rng, source["text"], rng.uniform(0.003, 0.02))
        planted.append({"id": f"near-{n:04d}", "text": text})
    return docs + planted


def _write(path: Path, rows: list[dict[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _listed(directory: Path) -> dict[str, str]:
    """id -> kept id, over every duplicate list the workflow wrote."""
    found: dict[str, str] = {}
    for path in sorted(directory.glob("duplicates-*.parquet")):
        table = pq.read_table(path)
        found.update(
            zip(table.column("id").to_pylist(), table.column("kept_id").to_pylist(), strict=True)
        )
    return found


def _exact_duplicates(
    rows: list[dict[str, str]], shingling: minhash.Shingling, threshold: float
) -> set[str]:
    """The documents to remove by exact Jaccard: in each component of the graph of pairs at
    or above `threshold`, all but the smallest id."""
    sets = {r["id"]: minhash.shingle_hashes(r["text"], shingling) for r in rows}
    holders: dict[int, list[str]] = {}
    for doc_id, hashes in sets.items():
        for h in hashes.tolist():
            holders.setdefault(h, []).append(doc_id)
    parent = {doc_id: doc_id for doc_id in sets}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    checked: set[tuple[str, str]] = set()
    for ids in holders.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                pair = (min(a, b), max(a, b))
                if pair in checked:
                    continue
                checked.add(pair)
                if minhash.exact_jaccard(sets[a], sets[b]) >= threshold:
                    ra, rb = root(a), root(b)
                    parent[max(ra, rb)] = min(ra, rb)
    return {doc_id for doc_id in sets if root(doc_id) != doc_id}


def _quality(predicted: set[str], truth: set[str]) -> tuple[float, float]:
    hits = len(predicted & truth)
    return hits / len(predicted), hits / len(truth)


def test_default_settings_find_planted_near_duplicates_as_exact_jaccard_does(
    tmp_path: Path,
) -> None:
    rows = _planted(seed=11, copies=150)
    source = _write(tmp_path / "in" / "docs.jsonl", rows)
    workflow = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=source)], str(tmp_path / "dups"), str(tmp_path / "cache")
    )
    assert round(workflow.threshold, 4) == 0.7942  # (1/20) ** (1/13)
    found = workflow.run(LocalExecutor())
    listed = _listed(tmp_path / "dups")
    assert found == len(listed)
    truth = _exact_duplicates(rows, minhash.Shingling(char_ngrams=24), workflow.threshold)
    assert len(truth) > 120  # most plants are light enough to be duplicates
    precision, recall = _quality(set(listed), truth)
    print(f"precision {precision:.3f} recall {recall:.3f} of {len(truth)}")
    assert precision >= 0.95, (precision, recall)
    assert recall >= 0.90, (precision, recall)
    # Each listed document names the smallest id of its cluster, never itself.
    assert all(kept < doc_id for doc_id, kept in listed.items())


def test_the_false_positive_check_removes_only_true_near_duplicates(tmp_path: Path) -> None:
    rows = _planted(seed=12, copies=120)
    source = _write(tmp_path / "in" / "docs.jsonl", rows)
    workflow = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=source)],
        str(tmp_path / "dups"),
        str(tmp_path / "cache"),
        false_positive_check=True,
        jaccard_threshold=0.7942,
    )
    workflow.run(LocalExecutor())
    truth = _exact_duplicates(rows, minhash.Shingling(char_ngrams=24), 0.7942)
    precision, recall = _quality(set(_listed(tmp_path / "dups")), truth)
    print(f"precision {precision:.3f} recall {recall:.3f} of {len(truth)}")
    # Every edge is a pair at or above the threshold, so every cluster lies in a true one.
    assert precision == 1.0
    assert recall >= 0.90, recall


BASE = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old "
    "wooden fence and the sun sets slowly behind the distant hills of the quiet valley."
)
SMALL = [
    {"id": "d3", "text": BASE},
    {"id": "d1", "text": BASE.replace("quick", "quick,")},
    {"id": "d2", "text": BASE.replace("valley.", "valley!")},
    {"id": "d4", "text": "An entirely different sentence about databases and indexes and logs."},
    {"id": "d5", "text": ""},
    {"id": "d6", "text": ""},
]


def test_small_corpus_gives_exact_lists_and_drop_records(tmp_path: Path) -> None:
    source = _write(tmp_path / "in" / "small.jsonl", SMALL)
    workflow = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=source)],
        str(tmp_path / "dups"),
        str(tmp_path / "cache"),
        num_partitions=3,
    )
    assert workflow.run() == 2
    # The smallest id of the cluster is kept; empty documents have no shingle, no candidate.
    assert _listed(tmp_path / "dups") == {"d2": "d1", "d3": "d1"}
    removal = Pipeline(
        "keep",
        [
            JsonlReader(file_paths=source),
            workflow.removal_stage(),
            JsonlWriter(str(tmp_path / "out")),
        ],
    )
    [task] = removal.run()
    kept = [
        json.loads(line)["id"]
        for f in sorted((tmp_path / "out").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert kept == ["d1", "d4", "d5", "d6"]
    drops = sorted(
        (d["id"], d["stage"], d["reason"], d["duplicate_of"])
        for d in iter_drops(task._metadata["drops"])
    )
    assert drops == [
        ("d2", "fuzzy_duplicate_removal", "fuzzy duplicate of d1", "d1"),
        ("d3", "fuzzy_duplicate_removal", "fuzzy duplicate of d1", "d1"),
    ]


def test_a_rerun_over_the_same_cache_lists_the_same_duplicates(tmp_path: Path) -> None:
    rows = _planted(seed=13, copies=40)
    source = _write(tmp_path / "in" / "docs.jsonl", rows)

    def run() -> dict[str, str]:
        FuzzyDeduplicationWorkflow(
            [JsonlReader(file_paths=source, blocksize=20_000)],
            str(tmp_path / "dups"),
            str(tmp_path / "cache"),
        ).run()
        return _listed(tmp_path / "dups")

    first = run()
    assert len(first) >= 30
    assert run() == first


def test_a_rerun_with_fewer_partitions_leaves_no_stale_list(tmp_path: Path) -> None:
    rows = _planted(seed=15, copies=30)
    source = _write(tmp_path / "in" / "docs.jsonl", rows)

    def run(partitions: int) -> int:
        return FuzzyDeduplicationWorkflow(
            [JsonlReader(file_paths=source)],
            str(tmp_path / "dups"),
            str(tmp_path / "cache"),
            num_partitions=partitions,
        ).run()

    found = run(8)
    assert len(list((tmp_path / "dups").glob("*.parquet"))) == 8
    assert run(3) == found == len(_listed(tmp_path / "dups"))
    assert sorted(p.name for p in (tmp_path / "dups").glob("*.parquet")) == [
        "duplicates-0.parquet",
        "duplicates-1.parquet",
        "duplicates-2.parquet",
    ]


def _components(edges: list[tuple[str, str]], partitions: int, path: Path) -> dict[str, str]:
    """Label propagation through ConnectedComponentsStage, partition by partition, round
    after round, as the workflow drives it; node -> label."""
    by_part: dict[int, list[tuple[str, str]]] = {}
    for u, v in edges:
        for a, b in ((u, v), (v, u)):
            by_part.setdefault(node_partition(a, partitions), []).append((a, b))
    files = {}
    for part, pairs in by_part.items():
        target = path / "edges" / f"part={part}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"u": [a for a, _ in pairs], "v": [b for _, b in pairs]}), target)
        files[part] = str(target)
    stage = ConnectedComponentsStage(str(path / "cc"), partitions)
    labels: dict[int, str] = {}
    inbox: dict[int, list[str]] = {}
    for round_ in range(50):
        sent: dict[int, list[str]] = {}
        for part in sorted(files):
            data, kinds = [files[part]], ["edges"]
            if round_:
                data += [labels[part], *inbox.get(part, [])]
                kinds += ["labels"] + ["messages"] * len(inbox.get(part, []))
            out = stage.process(
                FileGroupTask(
                    task_id=f"cc-{round_}-{part}",
                    data=data,
                    _metadata={"partition": part, "round": round_, "kinds": kinds},
                )
            )
            labels[part] = out.data[0]
            for message in out.data[1:]:
                target = int(message.rsplit("/messages/part=", 1)[1].split("/")[0])
                sent.setdefault(target, []).append(message)
        inbox = sent
        if not sent:
            break
    result: dict[str, str] = {}
    for path_ in labels.values():
        table = pq.read_table(path_)
        result.update(
            zip(table.column("node").to_pylist(), table.column("label").to_pylist(), strict=True)
        )
    return result


def _union_find_minimum(edges: list[tuple[str, str]]) -> dict[str, str]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in edges:
        ru, rv = root(u), root(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return {node: root(node) for node in parent}


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_components_label_every_node_with_its_components_smallest_id(
    tmp_path: Path, partitions: int
) -> None:
    rng = random.Random(partitions)
    nodes = [f"n{i:03d}" for i in range(300)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(220)]
    # A long chain, smallest id at the far end, so labels travel many rounds.
    chain = [f"c{i:03d}" for i in range(40, 0, -1)]
    edges += list(itertools.pairwise(chain))
    edges += [("z1", index_node("a0", "old.jsonl")), ("z2", "z1")]
    edges = [(u, v) for u, v in edges if u != v]
    assert _components(edges, partitions, tmp_path) == _union_find_minimum(edges)


def _ids(rows: list[dict[str, str]], prefix: str) -> list[dict[str, str]]:
    return [{"id": f"{prefix}-{r['id']}", "text": r["text"]} for r in rows]


def test_dedup_of_b_against_as_index_removes_what_a_batch_of_both_removes_from_b(
    tmp_path: Path,
) -> None:
    rows = _planted(seed=14, copies=90)
    rng = random.Random(14)
    rng.shuffle(rows)
    a_rows, b_rows = _ids(rows[:260], "a"), _ids(rows[260:], "b")  # every a id sorts first
    a_file = _write(tmp_path / "a" / "a.jsonl", a_rows)
    b_file = _write(tmp_path / "b" / "b.jsonl", b_rows)
    both = _write(tmp_path / "both" / "both.jsonl", a_rows + b_rows)
    index = {"index": "crawl", "index_root": str(tmp_path / "indexes")}

    batch = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=both)], str(tmp_path / "batch"), str(tmp_path / "batch-cache")
    )
    batch.run()
    batch_b = {i for i in _listed(tmp_path / "batch") if i.startswith("b-")}

    first = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=a_file)], str(tmp_path / "da"), str(tmp_path / "ca"), **index
    )
    first.run()
    assert set(_listed(tmp_path / "da")) == {
        i for i in _listed(tmp_path / "batch") if i.startswith("a-")
    }
    second = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=b_file)], str(tmp_path / "db"), str(tmp_path / "cb"), **index
    )
    second.run()
    incremental = _listed(tmp_path / "db")
    assert set(incremental) == batch_b
    assert len(batch_b) > 20
    # B's documents near A's name an A document; A's signatures were not computed again.
    assert any(kept.startswith("a-") for kept in incremental.values())
    assert not list((tmp_path / "cb" / "buckets").rglob("*a.jsonl*"))
    # Run again (as after a crash): the index recognises its own claims.
    second.run()
    assert _listed(tmp_path / "db") == incremental


def test_the_one_pass_index_form_drops_a_second_copy_and_names_the_first(tmp_path: Path) -> None:
    rows = _prose()[:30]
    first_file = _write(tmp_path / "in" / "first.jsonl", rows)
    copy = [{"id": "late-1", "text": _edit(random.Random(1), rows[7]["text"], 0.01)}]
    second_file = _write(tmp_path / "in" / "second.jsonl", copy + rows[10:12])
    removal = {"index": "stream", "index_root": str(tmp_path / "indexes"), "index_owner": "job-1"}

    def run(path: str) -> DocumentBatch:
        [out] = Pipeline(
            "stream", [JsonlReader(file_paths=path), FuzzyDuplicateRemoval(**removal)]
        ).run()
        return out

    assert run(first_file).num_items == 30
    out = run(second_file)
    assert out.num_items == 0
    drops = {d["id"]: d for d in iter_drops(out._metadata["drops"])}
    assert drops["late-1"]["duplicate_of"] == rows[7]["id"]
    assert drops["late-1"]["duplicate_source"] == first_file
    assert drops[rows[10]["id"]]["duplicate_of"] == rows[10]["id"]  # the same document again
    # Retrying the first file's task keeps what it kept.
    assert run(first_file).num_items == 30


def test_an_index_made_with_other_settings_is_refused(tmp_path: Path) -> None:
    source = _write(tmp_path / "in" / "small.jsonl", SMALL)
    index = {"index": "crawl", "index_root": str(tmp_path / "indexes")}
    FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=source)], str(tmp_path / "d1"), str(tmp_path / "c1"), **index
    ).run()
    other = FuzzyDeduplicationWorkflow(
        [JsonlReader(file_paths=source)],
        str(tmp_path / "d2"),
        str(tmp_path / "c2"),
        word_ngrams=5,
        num_bands=14,
        minhashes_per_band=8,
        **index,
    )
    with pytest.raises(GristmillError) as failure:
        other.run()
    assert "dedup index 'crawl' holds fuzzy band keys made with" in str(failure.value)
    assert '"char_ngrams": 24' in str(failure.value)
    assert '"word_ngrams": 5' in str(failure.value)


def test_a_batch_without_the_text_column_names_it() -> None:
    stage = MinHashStage(text_field="body")
    batch = DocumentBatch(task_id="t", data=pa.table({"id": ["x"], "text": ["hello"]}))
    with pytest.raises(GristmillError) as failure:
        stage.process(batch)
    assert str(failure.value) == (
        "stage 'minhash': the batch has no column 'body' (text_field); it has ['id', 'text']"
    )


def test_bad_settings_fail_when_the_workflow_is_built(tmp_path: Path) -> None:
    with pytest.raises(
        GristmillError, match="FuzzyDeduplicationWorkflow: num_bands must be an int >= 1, got 0"
    ):
        FuzzyDeduplicationWorkflow([], str(tmp_path / "d"), str(tmp_path / "c"), num_bands=0)
    with pytest.raises(GristmillError, match="jaccard_threshold must be in"):
        FuzzyDeduplicationWorkflow(
            [], str(tmp_path / "d"), str(tmp_path / "c"), jaccard_threshold=2.0
        )


def test_every_fuzzy_stage_is_registered_for_specs() -> None:
    for name in (
        "MinHashStage",
        "LSHStage",
        "BucketsToEdgesStage",
        "ConnectedComponentsStage",
        "IdentifyDuplicatesStage",
        "FuzzyDuplicateRemoval",
    ):
        assert get_stage_class(name).__name__ == name
