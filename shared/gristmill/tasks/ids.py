"""Deterministic task ids: the same input always yields the same ids, in every process and run.

Ids are what make re-running work harmless (an output named after its task id is overwritten, not
duplicated), so they depend only on content and lineage, never on time, randomness or hash seeds.
"""

from __future__ import annotations

import hashlib
import json
import re

from gristmill.errors import TaskIdError

__all__ = ["ROOT_TASK_ID", "check_task_id", "content_task_id", "derive_task_id"]

# The id of the EmptyTask that starts a pipeline when no initial tasks are given.
ROOT_TASK_ID = "root"

_ID_HEX_CHARS = 32  # 128 bits: collisions are not a practical concern at any corpus size

# Ids name output files, store objects and KV keys: nothing a path or a subject gives meaning to.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _digest(parts: list[object]) -> str:
    # JSON keeps the encoding unambiguous: ("a", "bc") and ("ab", "c") hash differently.
    encoded = json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:_ID_HEX_CHARS]


def derive_task_id(parent_id: str, stage_name: str, index: int) -> str:
    """The id of the `index`-th task that stage `stage_name` made from task `parent_id`."""
    if index < 0:
        raise ValueError(f"output index must be >= 0, got {index}")
    return _digest(["derived", parent_id, stage_name, index])


def content_task_id(*parts: str) -> str:
    """The id of a source task, from what it is made of (e.g. its sorted input file paths)."""
    return _digest(["content", *parts])


def check_task_id(task_id: str, where: str = "") -> str:
    """`task_id` if it can name a file anywhere (1-128 letters, digits, '_', '-', '.', starting
    with a letter or digit, no '..'); otherwise a `TaskIdError` saying so, prefixed by `where`
    (e.g. "stage 'reader' made a task whose")."""
    if isinstance(task_id, str) and _SAFE_ID.fullmatch(task_id) and ".." not in task_id:
        return task_id
    subject = f"{where} id" if where else "task id"
    raise TaskIdError(
        f"{subject} {task_id!r} cannot be a task id: use 1-128 letters, digits, '_', '-' or "
        f"'.', starting with a letter or digit, and no '..'"
    )
