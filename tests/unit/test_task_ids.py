"""Task ids: deterministic, sensitive to every input, stable across interpreters, and safe as file
names wherever they enter a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline, ProcessingStage
from gristmill.errors import TaskIdError
from gristmill.stages.deduplication.exact import HashBucketWriter
from gristmill.stages.text.io import JsonlWriter, ParquetWriter
from gristmill.tasks import content_task_id, derive_task_id

from toy_stages import AddLength

# Computed once from the current scheme; a change of the scheme must be deliberate.
ROOT_S_0 = "d69d9a075ee5cc143c55ae27bd7089c0"

HEX_ID = re.compile(r"[0-9a-f]{32}")


def test_derive_task_id_matches_the_pinned_value():
    assert derive_task_id("root", "s", 0) == ROOT_S_0


def test_derive_task_id_is_the_same_for_the_same_input():
    assert derive_task_id("parent", "Stage", 3) == derive_task_id("parent", "Stage", 3)


def test_content_task_id_is_the_same_for_the_same_input():
    assert content_task_id("a.jsonl", "b.jsonl") == content_task_id("a.jsonl", "b.jsonl")


def test_ids_are_the_same_in_a_fresh_interpreter_with_another_hash_seed():
    code = (
        "from gristmill.tasks import content_task_id, derive_task_id\n"
        "print(derive_task_id('root', 's', 0))\n"
        "print(content_task_id('a', 'bc'))\n"
    )
    seed = "12345" if os.environ.get("PYTHONHASHSEED") != "12345" else "54321"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": seed},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [derive_task_id("root", "s", 0), content_task_id("a", "bc")]


@pytest.mark.parametrize(
    "other",
    [("other", "s", 0), ("root", "t", 0), ("root", "s", 1)],
    ids=["parent", "stage_name", "index"],
)
def test_derive_task_id_changes_when_any_argument_changes(other):
    assert derive_task_id(*other) != derive_task_id("root", "s", 0)


def test_derive_task_id_distinguishes_split_points_of_parent_and_stage():
    assert derive_task_id("a", "bc", 0) != derive_task_id("ab", "c", 0)


def test_content_task_id_distinguishes_split_points_of_parts():
    assert content_task_id("a", "bc") != content_task_id("ab", "c")


def test_content_task_id_depends_on_the_order_of_parts():
    assert content_task_id("a", "b") != content_task_id("b", "a")


def test_content_task_id_of_one_part_differs_from_two_parts_joined():
    assert content_task_id("a,b") != content_task_id("a", "b")


def test_derived_and_content_ids_of_the_same_strings_differ():
    assert derive_task_id("a", "b", 0) != content_task_id("a", "b", "0")


def test_derive_task_id_rejects_a_negative_index():
    with pytest.raises(ValueError, match=r"^output index must be >= 0, got -1$"):
        derive_task_id("root", "s", -1)


@pytest.mark.parametrize(
    "task_id",
    [
        derive_task_id("root", "s", 0),
        derive_task_id("", "", 0),
        derive_task_id("ünïcødé", "Stage", 7),
        content_task_id(),
        content_task_id("x"),
        content_task_id("a", "bc"),
    ],
)
def test_ids_are_32_lowercase_hex_chars(task_id):
    assert HEX_ID.fullmatch(task_id)


# Ids name files, store objects and subjects: unsafe ones are refused where they enter a run.
UNSAFE_IDS = ["../escape", "a/b", ".hidden"]
RULE = "cannot be a task id: use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit, and no '..'"


class NamesItsOutput(ProcessingStage[DocumentBatch, DocumentBatch]):
    def __init__(self, task_id: str):
        self.task_id = task_id

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return DocumentBatch(task_id=self.task_id, data=task.data)


def _batch(task_id: str = "t1") -> DocumentBatch:
    return DocumentBatch(task_id=task_id, data=pa.table({"text": ["a b"]}))


@pytest.mark.parametrize("bad", UNSAFE_IDS)
def test_a_stage_that_names_its_output_unsafely_is_refused(bad: str) -> None:
    with pytest.raises(TaskIdError) as caught:
        Pipeline("p", [NamesItsOutput(bad)]).run(initial_tasks=[_batch()])
    assert str(caught.value) == f"stage 'NamesItsOutput' made a task whose id {bad!r} {RULE}"


def test_a_stage_may_name_its_output_safely() -> None:
    [out] = Pipeline("p", [NamesItsOutput("part-1.a_b")]).run(initial_tasks=[_batch()])
    assert out.task_id == "part-1.a_b"


@pytest.mark.parametrize("bad", UNSAFE_IDS)
def test_an_initial_task_with_an_unsafe_id_is_refused(bad: str) -> None:
    with pytest.raises(TaskIdError) as caught:
        Pipeline("p", [AddLength()]).run(initial_tasks=[_batch(bad)])
    assert str(caught.value) == f"initial task id {bad!r} {RULE}"


@pytest.mark.parametrize("bad", UNSAFE_IDS)
@pytest.mark.parametrize(
    "make", [JsonlWriter, ParquetWriter, HashBucketWriter], ids=lambda c: c.__name__
)
def test_a_writer_never_names_a_file_after_an_unsafe_id(
    bad: str, make: type[ProcessingStage[Any, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    writer = make(str(out))
    task = DocumentBatch(task_id=bad, data=pa.table({"id": ["d"], "_hash": ["ab12cd34"], "text": ["a"]}))  # fmt: skip
    with pytest.raises(TaskIdError) as caught:
        writer.process(task)
    assert str(caught.value) == f"stage '{writer.name}' was given a task whose id {bad!r} {RULE}"
    assert list(tmp_path.rglob("*")) == []
