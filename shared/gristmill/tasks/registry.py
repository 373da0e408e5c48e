"""Task classes by class path, so bytes can name the class they decode to without pickle.

Every `Task` subclass registers itself when its class statement runs; decoding a task of a class
whose module was never imported in this process fails with a message saying so.

Classes defined in a script (`__main__`) reach Ray's workers by value, through cloudpickle, which
rebuilds such a class in two steps: it makes an empty class of that name (running
`Task.__init_subclass__`, which registers it), then fills that class in — or, when the process
already has the class (the driver that sent it, a worker that got it earlier), throws the empty
one away and uses the class it has. The registry must end up with the class cloudpickle keeps,
never with the empty one, which lacks every method (e.g. `num_items`) and cannot be
instantiated. So each registered class carries a `_Registration` whose unpickling, which
cloudpickle does after choosing the class, registers the chosen class again.
"""

from __future__ import annotations

from typing import Any

from gristmill.errors import TaskSerializationError

__all__ = [
    "forget_task_types",
    "register_task_type",
    "registered_task_types",
    "task_type",
    "task_type_name",
    "task_types_by_name",
]

_TASK_TYPES: dict[str, type[Any]] = {}

# The class attribute holding a class's `_Registration`.
_REGISTRATION = "_gristmill_registration"


def task_type_name(cls: type[Any]) -> str:
    """The registry key of a task class: `module:QualName`."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_task_type(cls: type[Any]) -> None:
    """Make `cls` decodable. A later class with the same path (a reloaded module) replaces it."""
    _TASK_TYPES[task_type_name(cls)] = cls
    setattr(cls, _REGISTRATION, _Registration(cls))


class _Registration:
    """Travels in the state of a class pickled by value and registers, when unpickled, the
    class that state is being applied to (see the module docstring)."""

    def __init__(self, cls: type[Any]):
        self.cls = cls

    def __reduce__(self) -> tuple[Any, tuple[type[Any]]]:
        return _register_again, (self.cls,)


def _register_again(cls: type[Any]) -> _Registration:
    register_task_type(cls)
    registration: _Registration = getattr(cls, _REGISTRATION)
    return registration


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


def task_types_by_name() -> dict[str, type[Any]]:
    """A copy of the registry: name -> class."""
    return dict(_TASK_TYPES)


def forget_task_types(classes: set[type[Any]]) -> None:
    """Unregister `classes` where they are the registered ones (their code was unloaded)."""
    for name, cls in list(_TASK_TYPES.items()):
        if cls in classes:
            del _TASK_TYPES[name]
