"""Fusion: which adjacent stages share a step, and that fusing never changes an output."""

from __future__ import annotations

from typing import Any

from gristmill import Pipeline, Resources
from gristmill.stages import FusedStage

from toy_stages import AddLength, BatchTagger, KeepLong, MakeDocs, Recorder, SplitRows, docs_of


def _step_names(pipeline: Pipeline) -> list[list[str]]:
    return [[m.name for m in step.members] for step in pipeline.build().steps]


def test_adjacent_map_stages_with_equal_resources_share_one_step() -> None:
    pipeline = Pipeline("p", [MakeDocs(), AddLength(), KeepLong(), SplitRows()])
    plan = pipeline.build()
    assert _step_names(pipeline) == [["MakeDocs", "AddLength", "KeepLong", "SplitRows"]]
    assert isinstance(plan.steps[0].stage, FusedStage)
    assert plan.steps[0].stage.name == "MakeDocs+AddLength+KeepLong+SplitRows"
    assert plan.steps[0].fused


def test_different_resources_batch_size_process_batch_and_setup_on_node_break_fusion() -> None:
    log: list[str] = []
    pipeline = Pipeline(
        "p",
        [
            MakeDocs(),
            AddLength().with_(resources=Resources(cpus=0.5)),
            KeepLong().with_(resources=Resources(cpus=0.5)),
            SplitRows().with_(resources=Resources(cpus=0.5), batch_size=2),
            AddLength().with_(name="plain"),
            BatchTagger().with_(batch_size=1),
            Recorder(log),
            AddLength().with_(name="last"),
        ],
    )
    assert _step_names(pipeline) == [
        ["MakeDocs"],
        ["AddLength", "KeepLong"],
        ["SplitRows"],
        ["plain"],
        ["BatchTagger"],
        ["Recorder"],
        ["last"],
    ]


def test_build_without_fusion_gives_one_step_per_stage() -> None:
    plan = Pipeline("p", [MakeDocs(), AddLength(), KeepLong()]).build(fuse=False)
    assert [step.stage.name for step in plan.steps] == ["MakeDocs", "AddLength", "KeepLong"]
    assert not any(step.fused for step in plan.steps)


def _fingerprint(tasks: list[Any]) -> list[Any]:
    return [
        (
            t.task_id,
            t.dataset_name,
            t.to_pyarrow().to_pylist(),
            t._metadata,
            [(p.stage_name, p.items_in, p.items_out, p.tasks_in) for p in t._stage_perf],
        )
        for t in tasks
    ]


def test_fused_and_unfused_runs_give_identical_outputs() -> None:
    def pipeline() -> Pipeline:
        return Pipeline(
            "p",
            [
                MakeDocs(num_tasks=3, docs_per_task=4),
                AddLength(),
                KeepLong(min_words=3),
                SplitRows(),
                BatchTagger(tag="x"),
            ],
        )

    fused_plan = pipeline().build()
    assert len(fused_plan.steps) == 2  # the four map stages fused, the batch stage alone
    fused = pipeline().run()
    unfused = pipeline().run(fuse=False)
    assert _fingerprint(fused) == _fingerprint(unfused)
    # documents with >= 3 words: batch t has lengths t+1..t+4 for t in 0..2
    assert [doc for _, doc, _ in docs_of(fused)] == [
        "d0-2", "d0-3", "d1-1", "d1-2", "d1-3", "d2-0", "d2-1", "d2-2", "d2-3",
    ]  # fmt: skip
    assert len({t.task_id for t in fused}) == 9


def test_a_stage_that_fans_out_ends_its_step() -> None:
    fanning = MakeDocs().with_(fans_out=True)
    pipeline = Pipeline("p", [fanning, AddLength(), KeepLong()])
    assert [[m.name for m in step.members] for step in pipeline.build().steps] == [
        ["MakeDocs"],
        ["AddLength", "KeepLong"],
    ]
