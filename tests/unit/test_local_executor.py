"""LocalExecutor: lifecycle, batching, fan-out and drops, ids and their collisions, perf stats,
errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, EmptyTask, LocalExecutor, Pipeline, ProcessingStage
from gristmill.errors import GristmillError, StageError, TaskIdCollisionError
from gristmill.tasks import ROOT_TASK_ID, derive_task_id

from toy_stages import AddLength, BatchTagger, KeepLong, MakeDocs, Recorder, SplitRows, docs_of


def test_run_without_initial_tasks_starts_from_one_empty_task() -> None:
    outputs = Pipeline("p", [MakeDocs(num_tasks=2)]).run()
    assert [t.task_id for t in outputs] == [
        derive_task_id(ROOT_TASK_ID, "MakeDocs", 0),
        derive_task_id(ROOT_TASK_ID, "MakeDocs", 1),
    ]
    assert [t.dataset_name for t in outputs] == ["toy", "toy"]


def test_runs_are_repeatable_to_the_id() -> None:
    def run() -> list[tuple[str, str, dict[str, object]]]:
        return docs_of(Pipeline("p", [MakeDocs(3, 3), AddLength(), SplitRows()]).run())

    assert run() == run()


def test_fan_out_and_drops_account_for_every_document() -> None:
    executor = LocalExecutor()
    outputs = Pipeline("p", [MakeDocs(3, 4), AddLength(), KeepLong(min_words=4), SplitRows()]).run(
        executor, fuse=False
    )
    made, _, kept, split = executor.totals
    assert made.items_out == 12
    assert kept.items_in == 12
    assert kept.items_out == 6  # lengths 1-4, 2-5, 3-6: six documents have >= 4 words
    assert split.tasks_out == 6 == len(outputs)
    assert sum(t.num_items for t in outputs) + (kept.items_in - kept.items_out) == made.items_out
    assert len({t.task_id for t in outputs}) == 6


def test_a_stage_returning_none_drops_the_task() -> None:
    outputs = Pipeline("p", [MakeDocs(1, 2), AddLength(), KeepLong(min_words=9)]).run()
    assert outputs == []


def test_every_stage_is_set_up_once_and_torn_down_once_in_order() -> None:
    log: list[str] = []
    stages = [Recorder(log).with_(name="a"), Recorder(log).with_(name="b")]
    initial = [DocumentBatch(task_id=f"t{i}", data=pa.table({"x": [i]})) for i in range(3)]
    Pipeline("p", stages).run(initial_tasks=initial)
    assert log == [
        "a.setup_on_node", "a.setup", "b.setup_on_node", "b.setup",
        "a.process", "b.process", "a.process", "b.process", "a.process", "b.process",
        "b.teardown", "a.teardown",
    ]  # fmt: skip


def test_a_failing_stage_names_itself_and_the_task_and_everything_is_torn_down() -> None:
    log: list[str] = []
    stages = [Recorder(log).with_(name="a"), Recorder(log, fail_in="process").with_(name="b")]
    initial = [DocumentBatch(task_id="t0", data=pa.table({"x": [0]}))]
    with pytest.raises(StageError) as caught:
        Pipeline("p", stages).run(initial_tasks=initial)
    assert str(caught.value) == "stage 'b' failed in process() on task t0: RuntimeError: b broke in process"  # fmt: skip
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert log[-2:] == ["b.teardown", "a.teardown"]


def test_a_failing_setup_names_the_phase_and_tears_down_what_was_set_up() -> None:
    log: list[str] = []
    stages = [Recorder(log).with_(name="a"), Recorder(log, fail_in="setup").with_(name="b")]
    with pytest.raises(StageError, match=r"stage 'b' failed in setup\(\): RuntimeError"):
        Pipeline("p", stages).run(initial_tasks=[])
    assert log == ["a.setup_on_node", "a.setup", "b.setup_on_node", "b.setup", "a.teardown"]


def test_a_failing_teardown_is_reported_after_all_teardowns_ran() -> None:
    log: list[str] = []
    stages = [Recorder(log).with_(name="a"), Recorder(log, fail_in="teardown").with_(name="b")]
    with pytest.raises(StageError, match=r"stage 'b' failed in teardown\(\)"):
        Pipeline("p", stages).run(initial_tasks=[])
    assert log[-2:] == ["b.teardown", "a.teardown"]


def test_tasks_stream_depth_first_through_the_stages() -> None:
    log: list[str] = []
    stages = [Recorder(log).with_(name="a"), Recorder(log).with_(name="b")]
    initial = [DocumentBatch(task_id=f"t{i}", data=pa.table({"x": [i]})) for i in range(2)]
    Pipeline("p", stages).run(initial_tasks=initial)
    processes = [e for e in log if e.endswith("process")]
    assert processes == ["a.process", "b.process", "a.process", "b.process"]


def test_batch_size_groups_tasks_for_process_batch_and_keeps_each_lineage() -> None:
    BatchTagger.seen_batch_sizes.clear()
    pipeline = Pipeline("p", [MakeDocs(5, 1), BatchTagger(tag="k")])
    outputs = pipeline.run()
    assert BatchTagger.seen_batch_sizes == [2, 2, 1]
    made = [derive_task_id(ROOT_TASK_ID, "MakeDocs", i) for i in range(5)]
    assert [t.task_id for t in outputs] == [derive_task_id(m, "BatchTagger", 0) for m in made]
    assert [row["tag"] for _, _, row in docs_of(outputs)] == [f"K:d{i}-0" for i in range(5)]


def test_each_output_carries_perf_stats_of_every_stage_it_passed() -> None:
    outputs = Pipeline("p", [MakeDocs(1, 3), AddLength(), SplitRows()]).run()
    assert len(outputs) == 3
    for task in outputs:
        assert [(p.stage_name, p.items_in, p.items_out) for p in task._stage_perf] == [
            ("MakeDocs", 0, 3),
            ("AddLength", 3, 3),
            ("SplitRows", 3, 1),
        ]
        assert all(p.wall_time_s >= 0 for p in task._stage_perf)


def test_initial_tasks_without_ids_get_ids_from_their_content() -> None:
    def initial() -> list[DocumentBatch]:
        return [DocumentBatch(data=pa.table({"text": ["a b", "c"]})), DocumentBatch(data=pa.table({"text": ["d"]}))]  # fmt: skip

    first = Pipeline("p", [AddLength()]).run(initial_tasks=initial())
    second = Pipeline("p", [AddLength()]).run(initial_tasks=initial())
    assert [t.task_id for t in first] == [t.task_id for t in second]
    assert first[0].task_id != first[1].task_id


def test_initial_tasks_with_the_same_id_are_refused() -> None:
    twins = [DocumentBatch(task_id="same", data=pa.table({"text": [str(i)]})) for i in range(2)]
    with pytest.raises(GristmillError, match=r"two initial tasks share task_id 'same'"):
        Pipeline("p", [AddLength()]).run(initial_tasks=twins)


def test_a_missing_column_at_run_time_names_stage_column_and_task() -> None:
    task = DocumentBatch(task_id="t9", data=pa.table({"body": ["x"]}))
    with pytest.raises(GristmillError) as caught:
        Pipeline("p", [AddLength()]).run(initial_tasks=[task])
    assert str(caught.value) == "stage 'AddLength' needs column 'text', which task 't9' lacks (it has: 'body')"  # fmt: skip


def test_unknown_config_keys_are_refused() -> None:
    with pytest.raises(GristmillError, match=r"LocalExecutor: unknown config key\(s\) workers"):
        LocalExecutor({"workers": 4})


def test_a_stage_may_return_its_input_task_unchanged() -> None:
    class Identity(ProcessingStage[EmptyTask, EmptyTask]):
        def process(self, task: EmptyTask) -> EmptyTask:
            return task

    [out] = Pipeline("p", [Identity()]).run()
    assert out.task_id == ROOT_TASK_ID
    assert [p.stage_name for p in out._stage_perf] == ["Identity"]


class FixedId(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Names every output 'same', whatever its input: two inputs make one id."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return DocumentBatch(task_id="same", data=task.data)


class OnePerBatch(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Merges each batch of two into one task named 'same'."""

    batch_size = 2

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return self.process_batch([task])[0]

    def process_batch(self, tasks: list[DocumentBatch]) -> list[DocumentBatch]:
        return [DocumentBatch(task_id="same", data=pa.concat_tables([t.to_pyarrow() for t in tasks]))]  # fmt: skip


def _texts(*ids: str) -> list[DocumentBatch]:
    return [DocumentBatch(task_id=i, data=pa.table({"text": [f"{i} x"]})) for i in ids]


COLLISION = "task id 'same' of step {step} '{stage}' was made from two parents, {first} and {second}; give each output its own id, or leave task_id empty to have one derived"  # fmt: skip


def test_two_inputs_making_one_task_id_stop_the_run() -> None:
    log: list[str] = []
    with pytest.raises(TaskIdCollisionError) as caught:
        Pipeline("p", [FixedId(), Recorder(log)]).run(initial_tasks=_texts("a", "b"))
    assert str(caught.value) == COLLISION.format(step=0, stage="FixedId", first="'a'", second="'b'")
    assert isinstance(caught.value, GristmillError)
    assert log.count("Recorder.process") == 1  # the second 'same' never reached the next step
    assert log[-1] == "Recorder.teardown"


def test_a_collision_names_the_physical_step_fused_or_not() -> None:
    stages = [AddLength(), FixedId()]
    with pytest.raises(TaskIdCollisionError) as caught:
        Pipeline("p", stages).run(initial_tasks=_texts("a", "b"), fuse=False)
    first, second = (repr(derive_task_id(i, "AddLength", 0)) for i in "ab")  # AddLength's outputs
    assert str(caught.value) == COLLISION.format(
        step=1, stage="FixedId", first=first, second=second
    )
    with pytest.raises(TaskIdCollisionError) as caught:
        Pipeline("p", stages).run(initial_tasks=_texts("a", "b"))
    assert str(caught.value) == COLLISION.format(step=0, stage="AddLength+FixedId", first="'a'", second="'b'")  # fmt: skip


def test_an_output_made_from_a_whole_batch_names_the_batch_as_its_parent() -> None:
    with pytest.raises(TaskIdCollisionError) as caught:
        Pipeline("p", [OnePerBatch()]).run(initial_tasks=_texts("a", "b", "c"))
    assert str(caught.value) == COLLISION.format(step=0, stage="OnePerBatch", first="'a+b'", second="'c'")  # fmt: skip


def test_stages_that_keep_their_inputs_ids_are_no_collision() -> None:
    outputs = Pipeline("p", [Recorder([]), Recorder([]).with_(name="again")]).run(initial_tasks=_texts("a", "b"))  # fmt: skip
    assert [t.task_id for t in outputs] == ["a", "b"]
