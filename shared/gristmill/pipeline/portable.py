"""Stage and task classes that travel by value, for services that trust the submitter's code.

A pipeline defined in the user's own script names classes no service installed. To run it
anyway, the submitter sends the *source* of each module defining such a class (a `CodeBlob`:
the module's name and text, addressed by its SHA-256) and spec entries naming the class by its
qualified name in that blob. A process that trusts the submitter loads blobs with a
`CodeLoader`; one that does not is never given a loader, and `stage_from_spec` refuses the
entries naming the class. Nothing is pickled: the code is the text the user wrote.

Loaded classes keep the module name they had where they were written (`__main__` for a script),
so the tasks they make encode and decode under the same class path on both sides.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import linecache
import sys
import sysconfig
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.errors import SpecError
from gristmill.pipeline.spec import PipelineSpec, stage_to_spec
from gristmill.stages import ProcessingStage
from gristmill.stages.registry import installed_stage_name, scratch_registrations
from gristmill.tasks import Task
from gristmill.tasks.registry import forget_task_types, register_task_type, task_types_by_name

__all__ = ["CodeBlob", "CodeLoader", "module_blob", "portable_spec", "task_blobs"]

AnyStage = ProcessingStage[Any, Any]

# Loading swaps the process's stage registry for a scratch one: one load at a time.
_LOADING = threading.RLock()


@dataclass(frozen=True)
class CodeBlob:
    """The source of one module, as sent to a service."""

    module: str
    source: str
    path: str = ""  # where the submitter's file was (the loaded module's `__file__`)

    def to_bytes(self) -> bytes:
        """Canonical bytes (what `sha256` is computed over)."""
        fields = {"module": self.module, "source": self.source}
        if self.path:
            fields["path"] = self.path
        return json.dumps(fields, sort_keys=True).encode()

    @property
    def sha256(self) -> str:
        """The blob's address."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, payload: bytes, sha256: str) -> CodeBlob:
        """Parse a blob, refusing bytes that are not the ones `sha256` names."""
        if hashlib.sha256(payload).hexdigest() != sha256:
            raise SpecError(f"code {sha256[:12]}: stored bytes do not match their SHA-256")
        raw = json.loads(payload)
        return cls(module=raw["module"], source=raw["source"], path=raw.get("path", ""))


def module_blob(module_name: str) -> CodeBlob:
    """The source of an imported module, or an error saying why it cannot travel."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or not path or not str(path).endswith(".py"):
        raise SpecError(
            f"module {module_name!r} has no Python source file, so its classes cannot be sent "
            f"to the service; define them in a .py file (or register them as installed stages)"
        )
    source = Path(path).read_text(encoding="utf-8")
    return CodeBlob(module=module_name, source=source, path=str(Path(path).resolve()))


def portable_spec(
    name: str, stages: Iterable[AnyStage], description: str | None = None
) -> tuple[dict[str, Any], dict[str, CodeBlob]]:
    """A spec for `stages` any trusting service can run: installed stages by name, the others
    by class name in a blob of their module's source. Returns the spec and the blobs."""
    blobs: dict[str, CodeBlob] = {}
    entries = []
    for stage in stages:
        cls = type(stage)
        if installed_stage_name(cls) is not None:
            entries.append(stage_to_spec(stage))
            continue
        blob = module_blob(cls.__module__)
        blobs[blob.sha256] = blob
        entries.append(stage_to_spec(stage, code=blob.sha256))
    spec = PipelineSpec(name=name, description=description, stages=entries)
    return spec.to_dict(), blobs


def task_blobs(tasks: Iterable[Task[Any]]) -> dict[str, CodeBlob]:
    """Blobs of the modules defining `tasks`' classes, where gristmill does not define them."""
    blobs: dict[str, CodeBlob] = {}
    for module_name in sorted({type(task).__module__ for task in tasks}):
        if module_name != "gristmill" and not module_name.startswith("gristmill."):
            blob = module_blob(module_name)
            blobs[blob.sha256] = blob
    return blobs


class CodeLoader:
    """Loads blobs (fetched by SHA-256 with `fetch`) into this process, once each, keeping the
    `max_modules` used last (an always-on service sees new code every day; older modules are
    unloaded, their task classes forgotten, and loaded again if a job asks).

    Names the loaded code registers as stages are forgotten (specs address its classes by
    blob and qualified name); its task classes are registered under their original class path.
    Code may not stand in for what the process has installed: a blob naming a module of an
    installed package (gristmill's own included), or defining a task class under a name an
    installed module registered, is refused.
    """

    def __init__(self, fetch: Callable[[str], bytes], max_modules: int = 64):
        self._fetch = fetch
        self._modules: OrderedDict[str, types.ModuleType] = OrderedDict()
        self.max_modules = max_modules

    def module(self, sha256: str) -> types.ModuleType:
        """The module blob `sha256` defines, loaded on first use (thread-safe)."""
        with _LOADING:
            if sha256 not in self._modules:
                blob = CodeBlob.from_bytes(self._fetch(sha256), sha256)
                self._modules[sha256] = _load(blob, sha256)
                while len(self._modules) > self.max_modules:
                    _unload(*self._modules.popitem(last=False))
            self._modules.move_to_end(sha256)
            return self._modules[sha256]

    @property
    def loaded(self) -> list[str]:
        """The blobs loaded now, least recently used first."""
        return list(self._modules)

    def load_class(self, sha256: str, qualname: str) -> type:
        """The class `qualname` of blob `sha256` (a `ClassLoader` for `stage_from_spec`)."""
        found: Any = self.module(sha256)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if not isinstance(found, type):
            raise SpecError(f"code {sha256[:12]} defines no class {qualname!r}")
        return found


def _installed(module: str) -> bool:
    """Whether `module` (its top-level package) is gristmill's or comes from an installed
    location: the standard library or site-packages."""
    top = module.split(".", 1)[0]
    if top in ("gristmill", "services") or top in sys.builtin_module_names:
        return True
    if top == "__main__":
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    origin = spec.origin or ""
    if origin in ("built-in", "frozen"):
        return True
    places = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(origin.startswith(place.rstrip("/") + "/") for place in places)


def _unload(sha256: str, module: types.ModuleType) -> None:
    """Forget a loaded blob: its module and the task classes it registered."""
    classes = {v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Task)}
    forget_task_types(classes)
    sys.modules.pop(f"_gristmill_code_{sha256[:16]}", None)


def _load(blob: CodeBlob, sha256: str) -> types.ModuleType:
    if _installed(blob.module):
        raise SpecError(
            f"code {sha256[:12]} is module {blob.module!r}, which is installed where the service "
            f"runs; shipped code may not stand in for an installed module (rename the module "
            f"that defines your classes)"
        )
    name = f"_gristmill_code_{sha256[:16]}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=f"<code of {blob.module}>")
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # class decorators (dataclass) look their module up while running
    filename = f"<{blob.module} (code {sha256[:12]})>"
    module.__file__ = blob.path or filename  # scripts that find their data next to themselves
    # Tracebacks through this code show its lines, as they do for an imported module.
    linecache.cache[filename] = (len(blob.source), None, blob.source.splitlines(True), filename)
    before = task_types_by_name()
    try:
        with scratch_registrations():
            exec(compile(blob.source, filename, "exec"), vars(module))
        _keep_installed_classes(before, sha256)
        _restore_module_name(list(vars(module).values()), name, blob.module)
    except Exception as exc:
        del sys.modules[name]
        if isinstance(exc, SpecError):
            raise
        raise SpecError(
            f"code {sha256[:12]} (module {blob.module!r}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module


def _keep_installed_classes(before: dict[str, type[Any]], sha256: str) -> None:
    """Undo, and refuse, a class statement in shipped code that took the registry name of an
    installed task class (a class body can name any `__module__`)."""
    for name, cls in task_types_by_name().items():
        held = before.get(name)
        if held is not None and held is not cls and _installed(held.__module__):
            register_task_type(held)
            raise SpecError(
                f"code {sha256[:12]} defines the task class {name}, which this process has "
                f"from its installed code; rename the class or its module"
            )


def _restore_module_name(values: list[object], loaded_as: str, original: str) -> None:
    """Give the classes the loaded code defined (nested ones too) their original module name,
    and register its task classes under it."""
    for value in values:
        if isinstance(value, type) and value.__module__ == loaded_as:
            value.__module__ = original
            if issubclass(value, Task):
                register_task_type(value)
            _restore_module_name(list(vars(value).values()), loaded_as, original)
