"""Small, registered stages the pipeline, spec and executor tests share."""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from gristmill import CompositeStage, DocumentBatch, EmptyTask, ProcessingStage, register_stage
from gristmill.stages import NodeInfo, WorkerMetadata


@register_stage
class MakeDocs(ProcessingStage[EmptyTask, DocumentBatch]):
    """`num_tasks` batches of `docs_per_task` documents; document j of batch t has t+j+1 words."""

    def __init__(self, num_tasks: int = 2, docs_per_task: int = 3):
        self.num_tasks = num_tasks
        self.docs_per_task = docs_per_task

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["doc_id", "text"]

    def process(self, task: EmptyTask) -> list[DocumentBatch]:
        batches = []
        for t in range(self.num_tasks):
            ids = [f"d{t}-{j}" for j in range(self.docs_per_task)]
            texts = [" ".join(["word"] * (t + j + 1)) for j in range(self.docs_per_task)]
            batches.append(
                DocumentBatch(dataset_name="toy", data=pa.table({"doc_id": ids, "text": texts}))
            )
        return batches


@register_stage
class AddLength(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds `length`, the number of words of `text`."""

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["text"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["length"]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        words = pc.list_value_length(pc.split_pattern(table["text"], " "))
        return DocumentBatch(data=table.append_column("length", words))


@register_stage
class KeepLong(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Keeps documents with at least `min_words` words; drops a batch left empty."""

    def __init__(self, min_words: int = 3):
        self.min_words = min_words

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["length"]

    def process(self, task: DocumentBatch) -> DocumentBatch | None:
        table = task.to_pyarrow()
        kept = table.filter(pc.greater_equal(table["length"], self.min_words))
        return DocumentBatch(data=kept) if kept.num_rows else None


@register_stage
class SplitRows(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Fan-out: one task per document."""

    def process(self, task: DocumentBatch) -> list[DocumentBatch]:
        table = task.to_pyarrow()
        return [DocumentBatch(data=table.slice(i, 1)) for i in range(table.num_rows)]


@register_stage
class BatchTagger(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Overrides process_batch (a model stand-in): tags each document, records batch sizes."""

    batch_size = 2
    seen_batch_sizes: ClassVar[list[int]] = []

    def __init__(self, tag: str = "t"):
        self.tag = tag

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self.prefix = self.tag.upper()

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["tag"]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return self.process_batch([task])[0]

    def process_batch(self, tasks: list[DocumentBatch]) -> list[DocumentBatch]:
        BatchTagger.seen_batch_sizes.append(len(tasks))
        out = []
        for task in tasks:
            table = task.to_pyarrow()
            tags = pa.array([f"{self.prefix}:{d}" for d in table["doc_id"].to_pylist()])
            out.append(DocumentBatch(data=table.append_column("tag", tags)))
        return out


@register_stage
class LengthPipeline(CompositeStage[DocumentBatch, DocumentBatch]):
    """AddLength then KeepLong: a composite as users write them."""

    def __init__(self, min_words: int = 3):
        self.min_words = min_words

    def decompose(self) -> list[ProcessingStage[Any, Any]]:
        return [AddLength(), KeepLong(min_words=self.min_words)]


@register_stage
class Sampler(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Keeps the first `fraction` of each batch; validates its parameter in the constructor."""

    def __init__(self, fraction: float = 1.0):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        return DocumentBatch(data=table.slice(0, int(table.num_rows * self.fraction)))


class Recorder(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Passes tasks through and logs every lifecycle call into a shared list."""

    def __init__(self, log: list[str], fail_in: str = ""):
        self.log = log
        self.fail_in = fail_in

    def _note(self, event: str) -> None:
        self.log.append(f"{self.name}.{event}")
        if event == self.fail_in:
            raise RuntimeError(f"{self.name} broke in {event}")

    def setup_on_node(
        self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None
    ) -> None:
        self._note("setup_on_node")

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self._note("setup")

    def teardown(self) -> None:
        self._note("teardown")

    def process(self, task: DocumentBatch) -> DocumentBatch:
        self._note("process")
        return task


def docs_of(tasks: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(task id, doc id, row) for every document of `tasks`, in order: what tests compare."""
    rows = []
    for task in tasks:
        for row in task.to_pyarrow().to_pylist():
            rows.append((task.task_id, row["doc_id"], row))
    return rows
