"""Drop records through the executor: counted per stage, kept exactly once, never lost quietly."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gristmill import DocumentBatch, LocalExecutor, Pipeline, ProcessingStage
from gristmill.tasks import drop_count, iter_drops, record_drops


class KeepEven(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Keeps documents whose `n` is even; records the others as dropped."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        even = pc.equal(pc.bit_wise_and(table["n"], 1), 0)
        odd = table.filter(pc.invert(even))
        out = DocumentBatch(data=table.filter(even))
        record_drops(out, self.name, odd["id"].to_pylist(), "odd", odd["n"].to_pylist(), 0)
        return out


class SplitRows(ProcessingStage[DocumentBatch, DocumentBatch]):
    def process(self, task: DocumentBatch) -> list[DocumentBatch]:
        table = task.to_pyarrow()
        return [DocumentBatch(data=table.slice(i, 1)) for i in range(table.num_rows)]


class Vanish(ProcessingStage[DocumentBatch, DocumentBatch]):
    def process(self, task: DocumentBatch) -> None:
        return None


def _batch(task_id: str, numbers: list[int]) -> DocumentBatch:
    ids = [f"{task_id}-{n}" for n in numbers]
    return DocumentBatch(task_id=task_id, data=pa.table({"id": ids, "n": numbers}))


def test_drops_are_counted_in_perf_stats_and_totals() -> None:
    executor = LocalExecutor()
    outputs = Pipeline("p", [KeepEven()]).run(
        executor, initial_tasks=[_batch("a", [1, 2, 3, 4, 5])]
    )
    [out] = outputs
    assert out._stage_perf[-1].items_dropped == 3
    assert executor.totals[0].items_dropped == 3
    assert [r["id"] for r in iter_drops(out._metadata["drops"])] == ["a-1", "a-3", "a-5"]
    assert out.num_items + drop_count(out) == 5


def test_fan_out_hands_earlier_drops_to_the_first_child_only() -> None:
    outputs = Pipeline("p", [KeepEven(), SplitRows()]).run(
        initial_tasks=[_batch("a", [1, 2, 3, 4])]
    )
    assert [drop_count(t) for t in outputs] == [2, 0]
    assert sum(t.num_items for t in outputs) + sum(drop_count(t) for t in outputs) == 4


def test_a_batch_emptied_by_a_filter_travels_on_with_its_drop_records() -> None:
    outputs = Pipeline("p", [KeepEven()]).run(initial_tasks=[_batch("a", [1, 3]), _batch("b", [2])])
    assert [(t.num_items, drop_count(t)) for t in outputs] == [(0, 2), (1, 0)]


def test_a_stage_that_swallows_a_task_with_drop_records_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        outputs = Pipeline("p", [KeepEven(), Vanish()]).run(
            initial_tasks=[_batch("a", [1, 2])], fuse=False
        )
    assert outputs == []
    assert "stage Vanish returned nothing for task" in caplog.text
    assert "the drop records of 1 documents are lost" in caplog.text
