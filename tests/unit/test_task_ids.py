"""Task ids: deterministic, sensitive to every input, and stable across interpreters."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from gristmill.tasks import content_task_id, derive_task_id

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
