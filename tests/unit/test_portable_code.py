"""Classes shipped by value: a user's module travels as its source, addressed by SHA-256, and
only a process given a `CodeLoader` runs it."""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, ProcessingStage
from gristmill.errors import SpecError, UnknownStageError
from gristmill.pipeline import Pipeline
from gristmill.pipeline.portable import (
    CodeBlob,
    CodeLoader,
    module_blob,
    portable_spec,
    task_blobs,
)
from gristmill.pipeline.spec import StageSpec, stage_from_spec
from gristmill.stages import get_stage_class, registered_stage_names, run_stage
from gristmill.stages.text.io import JsonlWriter
from gristmill.tasks import EmptyTask, Task
from gristmill.tasks.registry import task_type_name

from toy_stages import KeepLong

USER_MODULE = "portable_user_code"
USER_SOURCE = '''"""A user's own stage and task class, as a script defines them."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from gristmill import DocumentBatch, ProcessingStage
from gristmill.tasks import Task


@dataclass(kw_only=True)
class Tally(Task[list[int]]):
    """Counts with a label."""

    label: str = ""

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return True


class Shout(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Upper-cases the text and adds `suffix`."""

    def __init__(self, suffix: str = "!"):
        self.suffix = suffix

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        texts = [text.upper() + self.suffix for text in table["text"].to_pylist()]
        return DocumentBatch(data=table.set_column(0, "text", pa.array(texts)))
'''


def no_source_message(module: str) -> str:
    return (
        f"module {module!r} has no Python source file, so its classes cannot be sent to the "
        f"service; define them in a .py file (or register them as installed stages)"
    )


def scratch_module(sha256: str) -> str:
    """The name a loaded blob's module has in `sys.modules`."""
    return f"_gristmill_code_{sha256[:16]}"


def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The user's module, imported from its file as a script's own module would be."""
    write_module(tmp_path, monkeypatch, USER_MODULE, USER_SOURCE)
    module = importlib.import_module(USER_MODULE)
    yield module
    sys.modules.pop(USER_MODULE, None)
    sys.modules.pop(scratch_module(user_blob(module).sha256), None)


def user_blob(user: types.ModuleType) -> CodeBlob:
    """The blob `module_blob` makes of the user's module (its path included)."""
    path = str(Path(user.__file__ or "").resolve())
    return CodeBlob(module=USER_MODULE, source=USER_SOURCE, path=path)


def loader_of(*blobs: CodeBlob) -> tuple[CodeLoader, list[str]]:
    """A loader over `blobs`, and the list of SHA-256s it fetched, in order."""
    by_sha = {blob.sha256: blob.to_bytes() for blob in blobs}
    fetched: list[str] = []

    def fetch(sha256: str) -> bytes:
        fetched.append(sha256)
        return by_sha[sha256]

    return CodeLoader(fetch), fetched


def batch(*texts: str) -> DocumentBatch:
    return DocumentBatch(task_id="b1", data=pa.table({"text": list(texts)}))


# -- sending ----------------------------------------------------------------------------------


def test_a_blob_is_addressed_by_the_sha256_of_its_canonical_bytes() -> None:
    blob = CodeBlob(module="m", source="x = 1\n")
    assert blob.to_bytes() == b'{"module": "m", "source": "x = 1\\n"}'
    assert blob.sha256 == hashlib.sha256(blob.to_bytes()).hexdigest()
    assert CodeBlob.from_bytes(blob.to_bytes(), blob.sha256) == blob


def test_portable_spec_ships_user_classes_by_code_and_installed_stages_by_name(
    user: types.ModuleType,
) -> None:
    spec, blobs = portable_spec(
        "shout", [user.Shout(suffix="?"), JsonlWriter(path="/out")], description="loud"
    )
    blob = user_blob(user)
    assert blobs == {blob.sha256: blob}
    assert spec == {
        "name": "shout",
        "description": "loud",
        "stages": [
            {"stage": "Shout", "params": {"suffix": "?"}, "code": blob.sha256},
            {"stage": "JsonlWriter", "params": {"path": "/out"}},
        ],
    }


def test_a_stage_registered_here_but_not_installed_travels_by_code() -> None:
    spec, blobs = portable_spec("toy", [KeepLong(min_words=5)])
    [blob] = blobs.values()
    assert blob.module == "toy_stages"
    assert blob.source == Path(sys.modules["toy_stages"].__file__ or "").read_text()
    assert spec["stages"] == [
        {"stage": "KeepLong", "params": {"min_words": 5}, "code": blob.sha256}
    ]


def test_one_blob_per_module_however_many_of_its_classes_are_used(
    user: types.ModuleType,
) -> None:
    spec, blobs = portable_spec("twice", [user.Shout(), user.Shout(suffix="?")])
    assert len(blobs) == 1
    assert [entry["code"] for entry in spec["stages"]] == list(blobs) * 2


def test_task_blobs_ship_the_modules_of_user_task_classes_only(user: types.ModuleType) -> None:
    tasks = [user.Tally(data=[1]), EmptyTask(), batch("a"), user.Tally(data=[2])]
    blob = user_blob(user)
    assert task_blobs(tasks) == {blob.sha256: blob}
    assert task_blobs([EmptyTask(), batch("a")]) == {}


def test_a_module_without_a_source_file_cannot_travel(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match=re.escape(no_source_message("sys"))):
        module_blob("sys")
    with pytest.raises(SpecError, match=re.escape(no_source_message("not_imported_anywhere"))):
        module_blob("not_imported_anywhere")
    monkeypatch.setitem(sys.modules, "made_in_memory", types.ModuleType("made_in_memory"))

    class Ghost(ProcessingStage[DocumentBatch, DocumentBatch]):
        def process(self, task: DocumentBatch) -> DocumentBatch:
            return task

    Ghost.__module__ = "made_in_memory"
    with pytest.raises(SpecError, match=re.escape(no_source_message("made_in_memory"))):
        portable_spec("ghost", [Ghost()])


# -- loading ----------------------------------------------------------------------------------


def test_loaded_classes_keep_the_module_name_they_were_written_in(
    user: types.ModuleType,
) -> None:
    _, blobs = portable_spec("shout", [user.Shout()])
    [sha] = blobs
    loader, fetched = loader_of(*blobs.values())
    shout = loader.load_class(sha, "Shout")
    assert shout is not user.Shout
    assert (shout.__module__, shout.__qualname__) == (USER_MODULE, "Shout")
    assert task_type_name(loader.load_class(sha, "Tally")) == f"{USER_MODULE}:Tally"
    assert loader.module(sha) is loader.module(sha)
    assert loader.module(sha).__name__ == scratch_module(sha)
    assert loader.module(sha).__file__ == str(Path(user.__file__ or "").resolve())
    assert fetched == [sha]


def test_a_loaded_task_class_decodes_tasks_encoded_by_the_original(
    user: types.ModuleType,
) -> None:
    payload = user.Tally(task_id="t1", dataset_name="d", data=[1, 2, 3], label="x").to_bytes()
    blob = module_blob(USER_MODULE)
    loader, _ = loader_of(blob)
    tally = loader.load_class(blob.sha256, "Tally")
    decoded = Task.from_bytes(payload)
    assert type(decoded) is tally
    assert (decoded.task_id, decoded.dataset_name, decoded.data, decoded.label) == (
        "t1",
        "d",
        [1, 2, 3],
        "x",
    )
    assert decoded.to_bytes() == payload
    assert type(tally.from_bytes(payload)) is tally


def test_a_loaded_stage_is_built_from_its_spec_and_runs(user: types.ModuleType) -> None:
    spec, blobs = portable_spec("shout", [user.Shout(suffix="?")])
    loader, _ = loader_of(*blobs.values())
    [stage] = Pipeline.from_spec(spec, loader.load_class).stages
    assert type(stage) is loader.load_class(next(iter(blobs)), "Shout")
    [out] = run_stage(stage, [batch("hi", "there")])
    assert out.to_pyarrow()["text"].to_pylist() == ["HI?", "THERE?"]


def test_registrations_made_by_loaded_code_do_not_claim_this_process_registry() -> None:
    blob = CodeBlob(
        module="shipped_only",
        source=(
            "from gristmill import DocumentBatch, ProcessingStage, register_stage\n"
            "\n"
            "@register_stage(name='ShippedOnlyStage')\n"
            "class Shipped(ProcessingStage[DocumentBatch, DocumentBatch]):\n"
            "    def process(self, task):\n"
            "        return task\n"
        ),
    )
    before = registered_stage_names()
    loader, _ = loader_of(blob)
    try:
        shipped = loader.load_class(blob.sha256, "Shipped")
        assert shipped.__module__ == "shipped_only"
        assert registered_stage_names() == before
        with pytest.raises(UnknownStageError, match=re.escape("unknown stage 'ShippedOnlyStage'")):
            get_stage_class("ShippedOnlyStage")
    finally:
        sys.modules.pop(scratch_module(blob.sha256), None)


def test_loaded_code_may_register_a_name_this_process_already_registered() -> None:
    installed = get_stage_class("JsonlWriter")
    blob = CodeBlob(
        module="own_writer",
        source=(
            "from gristmill import DocumentBatch, ProcessingStage, register_stage\n"
            "\n"
            "@register_stage\n"
            "class JsonlWriter(ProcessingStage[DocumentBatch, DocumentBatch]):\n"
            "    def process(self, task):\n"
            "        return task\n"
        ),
    )
    loader, _ = loader_of(blob)
    try:
        own = loader.load_class(blob.sha256, "JsonlWriter")
        assert own.__module__ == "own_writer"
        assert get_stage_class("JsonlWriter") is installed
    finally:
        sys.modules.pop(scratch_module(blob.sha256), None)


def test_nested_classes_keep_their_original_module_name_too() -> None:
    blob = CodeBlob(
        module="nested_code",
        source=(
            "from dataclasses import dataclass\n"
            "from gristmill.tasks import Task\n"
            "\n"
            "class Outer:\n"
            "    @dataclass(kw_only=True)\n"
            "    class Packet(Task[list[int]]):\n"
            "        @property\n"
            "        def num_items(self):\n"
            "            return len(self.data)\n"
            "\n"
            "        def validate(self):\n"
            "            return True\n"
        ),
    )
    loader, _ = loader_of(blob)
    try:
        packet = loader.load_class(blob.sha256, "Outer.Packet")
        assert task_type_name(packet) == "nested_code:Outer.Packet"
    finally:
        sys.modules.pop(scratch_module(blob.sha256), None)


def test_bytes_that_do_not_match_their_sha256_are_refused(user: types.ModuleType) -> None:
    blob = module_blob(USER_MODULE)
    tampered = blob.to_bytes().replace(b"upper()", b"lower()")
    message = f"code {blob.sha256[:12]}: stored bytes do not match their SHA-256"
    with pytest.raises(SpecError, match=re.escape(message)):
        CodeBlob.from_bytes(tampered, blob.sha256)
    loader = CodeLoader(lambda sha256: tampered)
    with pytest.raises(SpecError, match=re.escape(message)):
        loader.load_class(blob.sha256, "Shout")
    assert scratch_module(blob.sha256) not in sys.modules


def test_a_class_the_blob_does_not_define_is_named(user: types.ModuleType) -> None:
    blob = module_blob(USER_MODULE)
    loader, _ = loader_of(blob)
    for qualname in ("Whisper", "Shout.suffix_of"):
        with pytest.raises(
            SpecError, match=re.escape(f"code {blob.sha256[:12]} defines no class {qualname!r}")
        ):
            loader.load_class(blob.sha256, qualname)


def test_code_that_fails_to_load_is_reported_and_not_left_imported() -> None:
    blob = CodeBlob(module="broken", source="raise ValueError('boom')\n")
    loader, _ = loader_of(blob)
    with pytest.raises(
        SpecError,
        match=re.escape(
            f"code {blob.sha256[:12]} (module 'broken') failed to load: ValueError: boom"
        ),
    ):
        loader.module(blob.sha256)
    assert scratch_module(blob.sha256) not in sys.modules


def test_an_entry_with_code_is_refused_without_a_loader(user: types.ModuleType) -> None:
    spec, _ = portable_spec("shout", [user.Shout()])
    sha = spec["stages"][0]["code"]
    message = (
        f"stage #1 'Shout' is the submitter's own class (code {sha[:12]}), not a registered "
        f"stage; this service runs registered stages only"
    )
    with pytest.raises(SpecError, match=re.escape(message)):
        stage_from_spec(StageSpec(stage="Shout", code=sha), 1)
    with pytest.raises(SpecError, match=re.escape(message)):
        Pipeline.from_spec(spec)


@pytest.mark.parametrize(
    "module", ["gristmill.tasks.document", "services.worker", "json", "pyarrow"]
)
def test_shipped_code_may_not_stand_in_for_an_installed_module(module: str) -> None:
    blob = CodeBlob(module=module, source="x = 1\n")
    loader, _ = loader_of(blob)
    with pytest.raises(SpecError) as caught:
        loader.module(blob.sha256)
    assert str(caught.value) == (
        f"code {blob.sha256[:12]} is module {module!r}, which is installed where the service "
        f"runs; shipped code may not stand in for an installed module (rename the module that "
        f"defines your classes)"
    )


def test_shipped_code_may_not_take_the_name_of_an_installed_task_class() -> None:
    from gristmill.tasks.registry import task_type

    source = (
        "from gristmill.tasks import Task\n"
        "class DocumentBatch(Task):\n"
        "    __module__ = 'gristmill.tasks.document'\n"
        "    def num_items(self): return 0\n"
        "    def validate(self): return True\n"
    )
    blob = CodeBlob(module="innocent_looking", source=source)
    loader, _ = loader_of(blob)
    with pytest.raises(SpecError) as caught:
        loader.module(blob.sha256)
    assert str(caught.value) == (
        f"code {blob.sha256[:12]} defines the task class gristmill.tasks.document:DocumentBatch, "
        f"which this process has from its installed code; rename the class or its module"
    )
    assert task_type("gristmill.tasks.document:DocumentBatch") is DocumentBatch
    assert scratch_module(blob.sha256) not in sys.modules


def test_a_loader_keeps_the_modules_it_used_last_and_forgets_the_rest() -> None:
    from gristmill.tasks.registry import registered_task_types

    def task_module(n: int) -> CodeBlob:
        source = (
            "from gristmill.tasks import Task\n"
            f"class Kept{n}(Task):\n"
            "    def num_items(self): return 0\n"
            "    def validate(self): return True\n"
        )
        return CodeBlob(module=f"rotating_{n}", source=source)

    blobs = [task_module(n) for n in range(3)]
    loader, fetched = loader_of(*blobs)
    loader.max_modules = 2
    first = loader.module(blobs[0].sha256)
    loader.module(blobs[1].sha256)
    loader.module(blobs[0].sha256)  # used again: now the most recent
    loader.module(blobs[2].sha256)
    assert loader.loaded == [blobs[0].sha256, blobs[2].sha256]
    assert scratch_module(blobs[1].sha256) not in sys.modules
    names = {f"{c.__module__}:{c.__qualname__}" for c in registered_task_types()}
    assert "rotating_1:Kept1" not in names
    assert {"rotating_0:Kept0", "rotating_2:Kept2"} <= names
    loader.module(blobs[1].sha256)  # asked again: loaded again
    assert fetched == [b.sha256 for b in (blobs[0], blobs[1], blobs[2], blobs[1])]
    assert loader.module(blobs[0].sha256) is not first  # it was the least recent: unloaded
