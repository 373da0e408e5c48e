"""ProcessingStage settings, and `run_stage`: ids, lineage, errors, fusion."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest

from gristmill.errors import (
    GristmillError,
    PipelineBuildError,
    SpecError,
    StageError,
    TaskInputError,
)
from gristmill.stages import (
    CompositeStage,
    FusedStage,
    NodeInfo,
    ProcessingStage,
    Resources,
    WorkerMetadata,
    can_fuse,
    run_stage,
)
from gristmill.tasks import DocumentBatch, StagePerfStats, derive_task_id

Doc = DocumentBatch


def batch(task_id: str = "p", rows: int = 2, **kwargs: Any) -> Doc:
    return Doc(
        task_id=task_id, data=pa.table({"text": [f"{task_id}-{i}" for i in range(rows)]}), **kwargs
    )


class Copy(ProcessingStage[Doc, Doc]):
    def process(self, task: Doc) -> Doc:
        return Doc(data=task.data)


class Named(Copy):
    name = "custom-name"


class AddColumn(ProcessingStage[Doc, Doc]):
    def __init__(self, column: str = "x", value: int = 1):
        self.column = column
        self.value = value

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["text"]

    def process(self, task: Doc) -> Doc:
        table = task.to_pyarrow()
        return Doc(data=table.append_column(self.column, pa.array([self.value] * len(table))))


class Split(ProcessingStage[Doc, Doc]):
    def process(self, task: Doc) -> list[Doc]:
        return [Doc(data=task.to_pyarrow().slice(i, 1)) for i in range(task.num_items)]


class ReplaceSplit(ProcessingStage[Doc, Doc]):
    def process(self, task: Doc) -> list[Doc]:
        return [dataclasses.replace(task, task_id="") for _ in range(2)]


class Returns(ProcessingStage[Doc, Any]):
    def __init__(self, result: Any):
        self.result = result

    def process(self, task: Doc) -> Any:
        return self.result


class Fails(ProcessingStage[Doc, Doc]):
    def process(self, task: Doc) -> Doc:
        raise ValueError("boom")


class Forgetful(ProcessingStage[Doc, Doc]):
    def __init__(self, threshold: int, label: str = "a"):
        self.label = label

    def process(self, task: Doc) -> Doc:
        return task


class NeedsColumn(Copy):
    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["text", "lang"]


class PerInput(Copy):
    batch_size = 2

    def process_batch(self, tasks: list[Doc]) -> list[Doc]:
        return [Doc(data=t.data) for t in tasks]


class NodeSetup(Copy):
    def setup_on_node(
        self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None
    ) -> None:
        pass


class Both(CompositeStage[Doc, Doc]):
    def decompose(self) -> list[ProcessingStage[Any, Any]]:
        return [Copy(), Split()]


def test_default_name_is_the_class_name():
    assert Copy().name == "Copy"
    assert AddColumn.name == "AddColumn"
    assert NeedsColumn().name == "NeedsColumn"  # not inherited from Copy


def test_explicit_class_level_name_is_kept():
    assert Named().name == "custom-name"


def test_with_leaves_the_original_stage_unchanged():
    stage = Copy()
    clone = stage.with_(name="renamed", batch_size=4, resources=Resources(cpus=2, gpus=0.5))
    assert clone is not stage
    assert (clone.name, clone.batch_size, clone.resources) == (
        "renamed",
        4,
        Resources(cpus=2, gpus=0.5),
    )
    assert (stage.name, stage.batch_size, stage.resources) == ("Copy", 1, Resources())


def test_with_accepts_resources_as_a_dict():
    assert Copy().with_(resources={"cpus": 2}).resources == Resources(cpus=2)


def test_with_changes_a_constructor_parameter():
    stage = AddColumn("a", 1)
    clone = stage.with_(value=7)
    assert (clone.column, clone.value) == ("a", 7)
    assert stage.value == 1
    assert clone.get_params() == {"column": "a", "value": 7}


def test_with_unknown_setting_raises_type_error_naming_it():
    with pytest.raises(TypeError, match=r"AddColumn\.with_\(\) got unknown setting\(s\) nonexist"):
        AddColumn().with_(nonexistent=1)


def test_with_zero_batch_size_raises_pipeline_build_error():
    with pytest.raises(PipelineBuildError) as err:
        Copy().with_(batch_size=0)
    assert str(err.value) == "stage 'Copy': batch_size must be >= 1, got 0"


def test_get_params_returns_constructor_args():
    assert AddColumn("lang", 3).get_params() == {"column": "lang", "value": 3}
    assert Copy().get_params() == {}


def test_get_params_names_a_parameter_not_kept_as_attribute():
    with pytest.raises(SpecError, match=r"__init__ parameter\(s\) threshold; store each"):
        Forgetful(3).get_params()


def test_default_process_batch_flattens_lists_and_skips_none():
    tasks = [batch("a", 2), batch("b", 1)]
    assert [t.num_items for t in Split().process_batch(tasks)] == [1, 1, 1]
    assert Returns(None).process_batch(tasks) == []


def test_composite_stage_process_raises_pipeline_build_error():
    with pytest.raises(PipelineBuildError, match="composite stage 'Both' cannot process"):
        Both().process(batch())


def test_output_without_id_gets_the_derived_id():
    (out,) = run_stage(Copy(), [batch("p")])
    assert out.task_id == derive_task_id("p", "Copy", 0)


def test_fan_out_gives_distinct_derived_ids():
    outs = run_stage(Split(), [batch("p", rows=3)])
    assert [o.task_id for o in outs] == [derive_task_id("p", "Split", i) for i in range(3)]
    assert len({o.task_id for o in outs}) == 3


def test_returning_none_drops_the_task():
    assert run_stage(Returns(None), [batch()]) == []


def test_returning_a_non_task_raises_naming_the_stage():
    with pytest.raises(GristmillError) as err:
        run_stage(Returns("oops"), [batch()])
    assert str(err.value).startswith("stage 'Returns' returned str; process must return a Task")


def test_stage_exception_becomes_stage_error_with_cause():
    with pytest.raises(StageError) as err:
        run_stage(Fails(), [batch("t-42")])
    assert str(err.value) == "stage 'Fails' failed in process() on task t-42: ValueError: boom"
    assert isinstance(err.value.__cause__, ValueError)
    assert (err.value.stage, err.value.task_ids) == ("Fails", ["t-42"])


def test_two_outputs_with_the_same_explicit_id_raise():
    twins = [Doc(task_id="dup", data=pa.table({"a": [1]})) for _ in range(2)]
    with pytest.raises(GristmillError, match="returned two tasks with task_id 'dup'"):
        run_stage(Returns(twins), [batch()])


def test_invalid_outputs_are_dropped():
    empty = Doc(data=pa.table({"a": pa.array([], pa.int64())}))
    full = Doc(data=pa.table({"a": [1]}))
    assert run_stage(Returns([empty, full]), [batch("p")]) == [full]
    assert full.task_id == derive_task_id("p", "Returns", 1)


def test_children_inherit_lineage_and_get_one_new_perf_record():
    parent = batch(
        "p", 3, dataset_name="web", _metadata={"k": "v"}, _stage_perf=[StagePerfStats("Reader")]
    )
    outs = run_stage(Split(), [parent])
    for out in outs:
        assert out.dataset_name == "web"
        assert out._metadata == {"k": "v"}
        assert [p.stage_name for p in out._stage_perf] == ["Reader", "Split"]
        last = out._stage_perf[-1]
        assert (last.items_in, last.items_out, last.tasks_in) == (3, 1, 1)
    outs[0]._metadata["k"] = "changed"
    assert parent._metadata == {"k": "v"}
    assert [p.stage_name for p in parent._stage_perf] == ["Reader"]


def test_children_made_with_dataclasses_replace_get_one_new_perf_record_each():
    parent = batch("p", 1, _stage_perf=[StagePerfStats("Reader")])
    outs = run_stage(ReplaceSplit(), [parent])
    assert [[p.stage_name for p in o._stage_perf] for o in outs] == [["Reader", "ReplaceSplit"]] * 2
    assert [p.stage_name for p in parent._stage_perf] == ["Reader"]


def test_child_keeps_its_own_dataset_name():
    child = Doc(dataset_name="mine", data=pa.table({"a": [1]}))
    (out,) = run_stage(Returns(child), [batch(dataset_name="parent")])
    assert out.dataset_name == "mine"


def test_missing_input_column_raises_naming_stage_column_and_task():
    with pytest.raises(TaskInputError) as err:
        run_stage(NeedsColumn(), [batch("t-7")])
    expected = "stage 'NeedsColumn' needs column 'lang', which task 't-7' lacks (it has: 'text')"
    assert str(err.value) == expected


def test_batch_override_gives_each_output_the_id_from_its_own_parent():
    outs = run_stage(PerInput(), [batch("p1", dataset_name="d1"), batch("p2", dataset_name="d2")])
    assert [o.task_id for o in outs] == [
        derive_task_id("p1", "PerInput", 0),
        derive_task_id("p2", "PerInput", 0),
    ]
    assert [o.dataset_name for o in outs] == ["d1", "d2"]
    assert [o.to_pyarrow()["text"][0].as_py() for o in outs] == ["p1-0", "p2-0"]


def test_two_map_stages_with_equal_resources_can_fuse():
    assert can_fuse(AddColumn("a"), AddColumn("b")) is True


def test_stages_with_different_resources_cannot_fuse():
    assert can_fuse(AddColumn(), AddColumn().with_(resources=Resources(cpus=2))) is False


@pytest.mark.parametrize("position", [0, 1])
@pytest.mark.parametrize(
    "odd",
    [Copy().with_(batch_size=2), PerInput().with_(batch_size=1), NodeSetup()],
    ids=["batch_size_2", "overrides_process_batch", "overrides_setup_on_node"],
)
def test_stage_that_is_not_plain_map_style_cannot_fuse(odd, position):
    pair = [Copy(), Copy()]
    pair[position] = odd
    assert can_fuse(*pair) is False


def test_fused_run_equals_the_unfused_run():
    def tasks() -> list[Doc]:
        return [batch("p1", 2, _stage_perf=[StagePerfStats("Reader")]), batch("p2", 1)]

    def summary(outs: list[Any]) -> list[tuple[str, list[dict[str, Any]], list[str]]]:
        return [
            (o.task_id, o.to_pyarrow().to_pylist(), [p.stage_name for p in o._stage_perf])
            for o in outs
        ]

    first, second = Split(), AddColumn("y", 5)
    fused = summary(run_stage(FusedStage([first, second]), tasks()))
    assert fused == summary(run_stage(second, run_stage(first, tasks())))
    assert fused[0][0] == derive_task_id(derive_task_id("p1", "Split", 0), "AddColumn", 0)
    assert [names for _, _, names in fused] == [
        ["Reader", "Split", "AddColumn"],
        ["Reader", "Split", "AddColumn"],
        ["Split", "AddColumn"],
    ]


@pytest.mark.parametrize("bad", [0, -1, "soon", True])
def test_a_task_timeout_is_a_positive_number_of_seconds_or_none(bad: object) -> None:
    class Quick(ProcessingStage[Any, Any]):
        def process(self, task: Any) -> Any:
            return task

    assert Quick().with_(task_timeout_s=2.5).task_timeout_s == 2.5
    with pytest.raises(PipelineBuildError) as caught:
        Quick().with_(task_timeout_s=bad)
    assert str(caught.value) == (
        f"stage 'Quick': task_timeout_s must be a number of seconds above 0 or None (the "
        f"job's), got {bad!r}"
    )
