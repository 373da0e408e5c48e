"""The stage registry. It is process-global: every test registers names of its own."""

from __future__ import annotations

from typing import Any

import pytest

from gristmill.errors import StageRegistryError, UnknownStageError
from gristmill.stages import (
    ProcessingStage,
    get_stage_class,
    register_stage,
    registered_stage_names,
    stage_registry_name,
)


def path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Base(ProcessingStage[Any, Any]):
    def process(self, task: Any) -> Any:
        return task


def test_bare_decorator_registers_under_the_class_name():
    @register_stage
    class RegistryBareDecoratorStage(_Base):
        pass

    assert get_stage_class("RegistryBareDecoratorStage") is RegistryBareDecoratorStage
    assert stage_registry_name(RegistryBareDecoratorStage) == "RegistryBareDecoratorStage"
    assert "RegistryBareDecoratorStage" in registered_stage_names()


def test_decorator_with_name_registers_under_that_name():
    @register_stage(name="test_decorator_with_name/custom")
    class Stage(_Base):
        pass

    assert get_stage_class("test_decorator_with_name/custom") is Stage
    assert stage_registry_name(Stage) == "test_decorator_with_name/custom"


def test_register_stage_returns_the_class_unchanged():
    class RegistryReturnsClassStage(_Base):
        pass

    assert register_stage(RegistryReturnsClassStage) is RegistryReturnsClassStage
    assert register_stage(name="test_returns_class/x")(RegistryReturnsClassStage) is (
        RegistryReturnsClassStage
    )


def test_registered_names_are_sorted():
    register_stage(_Base, name="test_registered_names_are_sorted")
    names = registered_stage_names()
    assert names == sorted(names)
    assert "test_registered_names_are_sorted" in names


def test_a_different_class_under_a_taken_name_is_refused_naming_both():
    class First(_Base):
        pass

    class Second(_Base):
        pass

    register_stage(First, name="test_taken_name")
    with pytest.raises(StageRegistryError) as err:
        register_stage(Second, name="test_taken_name")
    assert str(err.value) == (
        f"stage name 'test_taken_name' is already registered to {path(First)}; "
        f"register {path(Second)} under another name"
    )
    assert get_stage_class("test_taken_name") is First


def test_registering_the_same_class_again_is_fine():
    class Again(_Base):
        pass

    register_stage(Again, name="test_same_class_again")
    assert register_stage(Again, name="test_same_class_again") is Again
    assert get_stage_class("test_same_class_again") is Again
    assert stage_registry_name(Again) == "test_same_class_again"


def test_unknown_name_lists_the_registered_names_without_quotes_around_the_message():
    register_stage(_Base, name="test_unknown_name/known")
    with pytest.raises(UnknownStageError) as err:
        get_stage_class("test_unknown_name/missing")
    message = str(err.value)
    assert message == (
        f"unknown stage 'test_unknown_name/missing' "
        f"(registered stages: {', '.join(registered_stage_names())})"
    )
    assert "test_unknown_name/known" in message
    assert isinstance(err.value, KeyError)


def test_unregistered_class_name_lookup_says_to_use_register_stage():
    class NeverRegistered(_Base):
        pass

    with pytest.raises(StageRegistryError) as err:
        stage_registry_name(NeverRegistered)
    message = str(err.value)
    assert message.startswith(f"stage class {path(NeverRegistered)} is not registered")
    assert "decorate it with @register_stage" in message


@pytest.mark.parametrize("thing", [int, object(), "StageName", None.__class__])
def test_registering_a_non_stage_is_refused(thing):
    with pytest.raises(StageRegistryError) as err:
        register_stage(thing, name="test_non_stage")
    assert str(err.value) == f"{thing!r} is not a ProcessingStage subclass"
    assert "test_non_stage" not in registered_stage_names()


PLUGIN_MODULE = """
from gristmill import ProcessingStage


class PluginStage(ProcessingStage):
    def __init__(self, threshold: int = 1):
        self.threshold = threshold

    def process(self, task):
        return task
"""


@pytest.fixture
def installed_plugin(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A distribution on sys.path whose entry points name one good and one broken stage."""
    (tmp_path / "gm_test_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "gm_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gm-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gristmill.stages]\n"
        "PluginStage = gm_test_plugin:PluginStage\n"
        "BrokenPluginStage = gm_test_plugin_missing:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gm_test_plugin"


def test_entry_point_stages_are_listed_without_loading_and_loaded_by_name(
    installed_plugin: str,
) -> None:
    import sys

    names = registered_stage_names()
    assert {"PluginStage", "BrokenPluginStage"} <= set(names)
    assert installed_plugin not in sys.modules  # listing did not import it
    cls = get_stage_class("PluginStage")
    assert path(cls) == "gm_test_plugin:PluginStage"
    assert stage_registry_name(cls) == "PluginStage"


def test_a_broken_entry_point_is_named_when_a_spec_uses_it(installed_plugin: str) -> None:
    with pytest.raises(StageRegistryError) as caught:
        get_stage_class("BrokenPluginStage")
    assert str(caught.value).startswith(
        "stage 'BrokenPluginStage': cannot load entry point gm_test_plugin_missing:Nothing: "
        "No module named 'gm_test_plugin_missing'"
    )
