"""Exact deduplication: the workflow finds every duplicate, keeps the smallest id, and the
removal stage drops exactly the others, recording each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill import DocumentBatch, Pipeline
from gristmill.stages.deduplication.exact import ExactDuplicateHasher, normalize_text
from gristmill.stages.text.io import AddId, JsonlReader, JsonlWriter
from gristmill.tasks import iter_drops
from gristmill.workflows import ExactDeduplicationWorkflow

TEXTS_A = ["alpha", "beta", "alpha", "gamma"]
TEXTS_B = ["beta", "delta", "Alpha ", "alpha"]


def _corpus(tmp_path: Path) -> str:
    source = tmp_path / "in"
    source.mkdir()
    for name, texts in (("a", TEXTS_A), ("b", TEXTS_B)):
        lines = [json.dumps({"id": f"{name}{i}", "text": t}) for i, t in enumerate(texts)]
        (source / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return str(source)


def _duplicates(path: Path) -> dict[str, str]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(path.glob("*.parquet")))
    return dict(zip(table["id"].to_pylist(), table["kept_id"].to_pylist(), strict=True))


def test_hasher_uses_md5_of_the_text_optionally_normalised() -> None:
    batch = DocumentBatch(task_id="t", data=pa.table({"text": ["Hello  World ", "hello world"]}))
    [raw] = Pipeline("h", [ExactDuplicateHasher()]).run(initial_tasks=[batch])
    assert raw.to_pyarrow()["_hash"].to_pylist() == [
        hashlib.md5(b"Hello  World ").hexdigest(),
        hashlib.md5(b"hello world").hexdigest(),
    ]
    batch = DocumentBatch(task_id="t", data=pa.table({"text": ["Hello  World ", "hello world"]}))
    [norm] = Pipeline("h", [ExactDuplicateHasher(normalize=True)]).run(initial_tasks=[batch])
    assert len(set(norm.to_pyarrow()["_hash"].to_pylist())) == 1
    assert normalize_text("  A\tB \n c ") == "a b c"


def test_workflow_lists_every_duplicate_with_the_smallest_id_kept(tmp_path: Path) -> None:
    workflow = ExactDeduplicationWorkflow(
        [JsonlReader(_corpus(tmp_path))],
        str(tmp_path / "dups"),
        str(tmp_path / "cache"),
        num_buckets=4,
    )
    assert workflow.run() == 3
    # alpha: a0, a2, b3 -> keep a0; beta: a1, b0 -> keep a1; "Alpha " differs without normalising
    assert _duplicates(tmp_path / "dups") == {"a2": "a0", "b3": "a0", "b0": "a1"}


def test_normalised_workflow_also_catches_case_and_space_variants(tmp_path: Path) -> None:
    workflow = ExactDeduplicationWorkflow(
        [JsonlReader(_corpus(tmp_path))],
        str(tmp_path / "dups"),
        str(tmp_path / "cache"),
        normalize=True,
    )
    assert workflow.run() == 4
    assert _duplicates(tmp_path / "dups") == {"a2": "a0", "b2": "a0", "b3": "a0", "b0": "a1"}


def test_removal_drops_exactly_the_duplicates_and_records_each(tmp_path: Path) -> None:
    source = _corpus(tmp_path)
    workflow = ExactDeduplicationWorkflow(
        [JsonlReader(source)], str(tmp_path / "dups"), str(tmp_path / "cache")
    )
    workflow.run()
    outputs = Pipeline(
        "keep", [JsonlReader(source), workflow.removal_stage(), JsonlWriter(str(tmp_path / "out"))]
    ).run()
    kept = [json.loads(line)["id"] for p in sorted((tmp_path / "out").iterdir()) for line in p.read_text().splitlines()]  # fmt: skip
    assert sorted(kept) == ["a0", "a1", "a3", "b1", "b2"]
    drops = [r for task in outputs for r in iter_drops(task._metadata.get("drops", []))]
    assert sorted((r["id"], r["reason"]) for r in drops) == [
        ("a2", "exact duplicate of a0"),
        ("b0", "exact duplicate of a1"),
        ("b3", "exact duplicate of a0"),
    ]
    assert len(kept) + len(drops) == len(TEXTS_A) + len(TEXTS_B)


def test_workflow_with_ids_from_add_id_is_repeatable(tmp_path: Path) -> None:
    source = _corpus(tmp_path)

    def run(name: str) -> dict[str, str]:
        workflow = ExactDeduplicationWorkflow(
            [JsonlReader(source, fields=["text"]), AddId(id_field="doc")],
            str(tmp_path / name / "dups"),
            str(tmp_path / name / "cache"),
            id_field="doc",
        )
        workflow.run()
        return _duplicates(tmp_path / name / "dups")

    first = run("one")
    assert first == run("two")
    assert len(first) == 3
