"""Pipeline.build(): decomposition, the input-chain check, settings checks, describe()."""

from __future__ import annotations

import pytest

from gristmill import Pipeline, Resources
from gristmill.errors import MissingInputError, PipelineBuildError, ResourcesError

from toy_stages import AddLength, KeepLong, LengthPipeline, MakeDocs, SplitRows


def test_add_stage_chains_and_keeps_order() -> None:
    pipeline = Pipeline("p")
    assert pipeline.add_stage(MakeDocs()).add_stage(AddLength()) is pipeline
    assert [s.name for s in pipeline.stages] == ["MakeDocs", "AddLength"]


def test_build_decomposes_composite_stages_in_place() -> None:
    plan = Pipeline("p", [MakeDocs(), LengthPipeline(min_words=4), SplitRows()]).build(fuse=False)
    assert [s.name for s in plan.stages] == ["MakeDocs", "AddLength", "KeepLong", "SplitRows"]
    keep = plan.stages[2]
    assert isinstance(keep, KeepLong)
    assert keep.min_words == 4


def test_missing_input_column_fails_build_naming_stage_position_and_column() -> None:
    pipeline = Pipeline("p", [MakeDocs(), KeepLong()])
    with pytest.raises(MissingInputError) as caught:
        pipeline.build()
    message = str(caught.value)
    assert "stage #2 'KeepLong' needs column 'length'" in message
    assert "available: 'doc_id', 'text'" in message
    assert caught.value.missing == ["length"]


def test_columns_made_upstream_satisfy_later_stages() -> None:
    plan = Pipeline("p", [MakeDocs(), AddLength(), KeepLong()]).build(fuse=False)
    assert len(plan.steps) == 3


def test_first_stage_inputs_count_as_given_by_the_initial_tasks() -> None:
    # AddLength reads `text`, which only the initial tasks can provide; a later stage may too.
    plan = Pipeline("p", [AddLength(), AddLength().with_(name="again")]).build(fuse=False)
    assert [s.name for s in plan.stages] == ["AddLength", "again"]


def test_stage_class_instead_of_instance_is_rejected() -> None:
    with pytest.raises(
        PipelineBuildError, match=r"stage #2 is the class AddLength, not an instance"
    ):
        Pipeline("p", [MakeDocs(), AddLength]).build()  # type: ignore[list-item]


def test_non_stage_is_rejected() -> None:
    with pytest.raises(PipelineBuildError, match=r"stage #1 is a str, not a ProcessingStage"):
        Pipeline("p", ["AddLength"]).build()  # type: ignore[list-item]


def test_empty_pipeline_is_rejected() -> None:
    with pytest.raises(PipelineBuildError, match=r"pipeline 'empty' has no stages"):
        Pipeline("empty").build()


def test_bad_resources_are_rejected_when_the_stage_is_configured() -> None:
    with pytest.raises(ResourcesError, match=r"cpus must be a finite number >= 0, got -1"):
        AddLength().with_(resources=Resources(cpus=-1))
    with pytest.raises(ResourcesError, match=r"not both"):
        AddLength().with_(resources={"gpus": 0.5, "gpu_memory_gb": 4})


def test_resources_that_are_not_a_resources_object_fail_build_naming_the_stage() -> None:
    stage = AddLength()
    stage.resources = {"cpus": 1}  # type: ignore[assignment]
    with pytest.raises(
        PipelineBuildError, match=r"stage 'AddLength': resources must be a Resources"
    ):
        Pipeline("p", [MakeDocs(), stage]).build()


def test_zero_batch_size_fails_build() -> None:
    stage = AddLength()
    stage.batch_size = 0
    with pytest.raises(PipelineBuildError, match=r"stage 'AddLength': batch_size must be >= 1"):
        Pipeline("p", [MakeDocs(), stage]).build()


def test_describe_shows_steps_resources_columns_and_why_each_step_ends() -> None:
    stricter = KeepLong(min_words=5).with_(name="KeepLonger", resources=Resources(cpus=2), batch_size=4)  # fmt: skip
    pipeline = Pipeline("toy", [MakeDocs(), AddLength(), KeepLong(), stricter], description="a toy")
    assert pipeline.describe().splitlines() == [
        "Pipeline 'toy': 4 stages in 3 steps",
        "  step 1  [cpus=1, batch_size=1]  ends: 'MakeDocs' fans out (process returns list[DocumentBatch])",
        "    MakeDocs    reads: -                    writes: doc_id, text",
        "  step 2  [cpus=1, batch_size=1]  (fused)  ends: next stage 'KeepLonger' has batch_size 4",
        "    AddLength   reads: text                 writes: length",
        "    KeepLong    reads: length               writes: -",
        "  step 3  [cpus=2, batch_size=4]  ends: last stage",
        "    KeepLonger  reads: length               writes: -",
        "  a toy",
    ]


def test_after_a_stage_that_may_write_any_column_columns_are_not_checked() -> None:
    from gristmill.stages.text.io import JsonlReaderStage

    reader = JsonlReaderStage()  # no `fields`: it passes on whatever the files hold
    assert reader.outputs() == ([], ["text", "*"])
    plan = Pipeline("p", [reader, KeepLong()]).build(fuse=False)
    assert [s.name for s in plan.stages] == ["jsonl_reader", "KeepLong"]
    with pytest.raises(MissingInputError):
        Pipeline("p", [JsonlReaderStage(fields=["text"]), KeepLong()]).build()
