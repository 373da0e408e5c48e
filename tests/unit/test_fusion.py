"""Fusion: which adjacent stages share a step, why a step ends, and that fusing never changes an
output."""

from __future__ import annotations

from typing import Any, List, Optional  # noqa: UP035  (old-style annotations are detected too)

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, EmptyTask, Pipeline, ProcessingStage, Resources
from gristmill.errors import PipelineBuildError
from gristmill.stages import FusedStage, fan_out_reason

from toy_stages import AddLength, BatchTagger, KeepLong, MakeDocs, Recorder, SplitRows, docs_of


def _step_names(pipeline: Pipeline) -> list[list[str]]:
    return [[m.name for m in step.members] for step in pipeline.build().steps]


def test_adjacent_map_stages_with_equal_resources_share_one_step() -> None:
    pipeline = Pipeline("p", [MakeDocs(), AddLength(), KeepLong(), SplitRows()])
    plan = pipeline.build()
    assert _step_names(pipeline) == [["MakeDocs"], ["AddLength", "KeepLong", "SplitRows"]]
    assert isinstance(plan.steps[1].stage, FusedStage)
    assert plan.steps[1].stage.name == "AddLength+KeepLong+SplitRows"
    assert plan.steps[1].fused


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
    # the source alone (it fans out), the three map stages fused, the batch stage alone
    assert len(fused_plan.steps) == 3
    fused = pipeline().run()
    unfused = pipeline().run(fuse=False)
    assert _fingerprint(fused) == _fingerprint(unfused)
    # documents with >= 3 words: batch t has lengths t+1..t+4 for t in 0..2
    assert [doc for _, doc, _ in docs_of(fused)] == [
        "d0-2", "d0-3", "d1-1", "d1-2", "d1-3", "d2-0", "d2-1", "d2-2", "d2-3",
    ]  # fmt: skip
    assert len({t.task_id for t in fused}) == 9


def test_a_stage_that_fans_out_ends_its_step() -> None:
    fanning = AddLength().with_(fans_out=True)
    pipeline = Pipeline("p", [fanning, KeepLong(), SplitRows()])
    assert _step_names(pipeline) == [["AddLength"], ["KeepLong", "SplitRows"]]
    assert pipeline.build().steps[0].ends == "'AddLength' fans out (fans_out = True)"


def test_a_stage_whose_process_returns_a_list_fans_out_without_a_flag() -> None:
    pipeline = Pipeline("p", [AddLength(), SplitRows(), KeepLong()])
    assert _step_names(pipeline) == [["AddLength", "SplitRows"], ["KeepLong"]]
    assert pipeline.build().steps[0].ends == "'SplitRows' fans out (process returns list[DocumentBatch])"  # fmt: skip


def test_fans_out_false_lets_a_list_returning_stage_fuse_with_the_next() -> None:
    pipeline = Pipeline("p", [MakeDocs().with_(fans_out=False), AddLength()])
    assert _step_names(pipeline) == [["MakeDocs", "AddLength"]]


def test_a_spec_can_say_that_a_stage_does_not_fan_out() -> None:
    spec = {"name": "p", "stages": [{"stage": "MakeDocs", "with": {"fans_out": False}}, {"stage": "AddLength"}]}  # fmt: skip
    pipeline = Pipeline.from_spec(spec)
    assert _step_names(pipeline) == [["MakeDocs", "AddLength"]]
    assert pipeline.to_spec() == spec


class OneDoc(ProcessingStage[EmptyTask, DocumentBatch]):
    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["text"]

    def process(self, task: EmptyTask) -> DocumentBatch:
        return DocumentBatch(data=pa.table({"text": ["a b"]}))


class Unannotated(ProcessingStage[DocumentBatch, DocumentBatch]):
    def process(self, task):  # type: ignore[no-untyped-def]
        return [task]


class MaybeMany(ProcessingStage[DocumentBatch, DocumentBatch]):
    def process(self, task: DocumentBatch) -> DocumentBatch | list[DocumentBatch]:
        return task


class OldStyleMany(ProcessingStage[DocumentBatch, DocumentBatch]):
    def process(self, task: DocumentBatch) -> Optional[List[DocumentBatch]]:  # noqa: UP006, UP045
        return [task]


class InheritsProcess(SplitRows):
    """Its process is SplitRows's, which its author annotated."""


def _local_stage() -> ProcessingStage[Any, Any]:
    class LocalBatch(DocumentBatch):  # not resolvable from the stage's module
        pass

    class Local(ProcessingStage[LocalBatch, LocalBatch]):
        def process(self, task: LocalBatch) -> list[LocalBatch]:
            return [task]

    return Local()


@pytest.mark.parametrize(
    ("stage", "reason"),
    [
        (MakeDocs(), "process returns list[DocumentBatch]"),
        (OneDoc(), "a source: process takes an EmptyTask"),
        (MaybeMany(), "process returns DocumentBatch | list[DocumentBatch]"),
        (OldStyleMany(), "process returns Optional[List[DocumentBatch]]"),
        (InheritsProcess(), "process returns list[DocumentBatch]"),
        (_local_stage(), "process returns list[LocalBatch]"),
        (AddLength().with_(fans_out=True), "fans_out = True"),
        (MakeDocs().with_(fans_out=False), None),
        (AddLength(), None),
        (Unannotated(), None),  # nothing written, nothing known: it fuses
        (FusedStage([AddLength(), SplitRows()]), "process returns list[DocumentBatch]"),
    ],
    ids=lambda v: v.name if isinstance(v, ProcessingStage) else None,
)
def test_fan_out_is_found_from_what_the_stage_declares(stage: Any, reason: str | None) -> None:
    assert fan_out_reason(stage) == reason


def test_describe_says_why_each_step_ends() -> None:
    class NodeSetup(AddLength):
        def setup_on_node(self, node_info: Any = None, worker_metadata: Any = None) -> None:
            pass

    stages = [
        OneDoc(),
        AddLength(),
        BatchTagger(),
        NodeSetup(),
        AddLength().with_(name="late"),
        KeepLong().with_(resources=Resources(cpus=0.5)),
        KeepLong().with_(name="batched", resources=Resources(cpus=0.5), batch_size=3),
    ]
    assert [step.ends for step in Pipeline("p", stages).build().steps] == [
        "'OneDoc' fans out (a source: process takes an EmptyTask)",
        "next stage 'BatchTagger' overrides process_batch",
        "'BatchTagger' overrides process_batch",
        "'NodeSetup' sets up per node",
        "next stage 'KeepLong' asks for other resources (cpus=0.5)",
        "next stage 'batched' has batch_size 3",
        "last stage",
    ]
    unfused = Pipeline("p", [AddLength(), KeepLong()]).build(fuse=False)
    assert [step.ends for step in unfused.steps] == ["fusion off", "last stage"]


def test_fans_out_must_be_true_false_or_none() -> None:
    with pytest.raises(PipelineBuildError, match=r"^stage 'AddLength': fans_out must be True, False or None \(detect it\), got 'yes'$"):  # fmt: skip
        AddLength().with_(fans_out="yes")
