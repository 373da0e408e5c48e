"""Task classes by class path, so bytes can name the class they decode to without pickle.

Every `Task` subclass registers itself when its class statement runs; decoding a task of a class
whose module was never imported in this process fails with a message saying so.
"""

from __future__ import annotations

from typing import Any

from gristmill.errors import TaskSerializationError

__all__ = ["register_task_type", "registered_task_types", "task_type", "task_type_name"]

_TASK_TYPES: dict[str, type[Any]] = {}


def task_type_name(cls: type[Any]) -> str:
    """The registry key of a task class: `module:QualName`."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_task_type(cls: type[Any]) -> None:
    """Make `cls` decodable. A later class with the same path (a reloaded module) replaces it."""
    _TASK_TYPES[task_type_name(cls)] = cls


def task_type(name: str) -> type[Any]:
    """The task class registered as `name`."""
    try:
        return _TASK_TYPES[name]
    except KeyError:
        module = name.partition(":")[0]
        raise TaskSerializationError(
            f"unknown task type '{name}': import module '{module}' (which defines it) "
            f"in this process before decoding"
        ) from None


def registered_task_types() -> list[type[Any]]:
    """Every task class registered in this process."""
    return list(_TASK_TYPES.values())
