"""`ExactDeduplicationWorkflow`: finds exact duplicates across a dataset with two pipelines.

Workflows sit above pipelines (they build and run several), so they live here rather than with
the stages they use (`gristmill.stages.deduplication.exact`, which explains the method).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.executors.base import BaseExecutor
from gristmill.pipeline import Pipeline
from gristmill.stages.base import ProcessingStage
from gristmill.stages.deduplication.exact import (
    DuplicateFinder,
    ExactDuplicateHasher,
    ExactDuplicateRemoval,
    HashBucketWriter,
)
from gristmill.tasks import FileGroupTask, Task, content_task_id

__all__ = ["ExactDeduplicationWorkflow"]


class ExactDeduplicationWorkflow:
    """Finds exact duplicates across a whole dataset (steps 1 and 2 of the module docstring).

    `read_stages` read the documents with ids (e.g. `[JsonlReader(path), AddId()]`);
    `cache_path` receives the hash buckets, `output_path` the duplicate lists. `run()` returns
    the number of duplicates found.
    """

    def __init__(
        self,
        read_stages: list[ProcessingStage[Any, Any]],
        output_path: str,
        cache_path: str,
        text_field: str = "text",
        id_field: str = "id",
        normalize: bool = False,
        num_buckets: int = 16,
    ):
        self.read_stages = read_stages
        self.output_path, self.cache_path = output_path, cache_path
        self.text_field, self.id_field = text_field, id_field
        self.normalize, self.num_buckets = normalize, num_buckets

    def run(self, executor: BaseExecutor | None = None) -> int:
        """Hash and bucket every document, then find the duplicates bucket by bucket."""
        hashing = Pipeline(
            "exact_dedup_hash",
            [
                *self.read_stages,
                ExactDuplicateHasher(self.text_field, normalize=self.normalize),
                HashBucketWriter(self.cache_path, self.num_buckets, self.id_field),
            ],
        )
        written = [path for task in hashing.run(executor) for path in task.data]
        buckets: dict[int, list[str]] = {}
        for path in written:
            bucket = int(path.rsplit("/bucket=", 1)[1].split("/", 1)[0])
            buckets.setdefault(bucket, []).append(path)
        groups: list[Task[Any]] = [
            FileGroupTask(
                task_id=content_task_id("bucket", str(b), *sorted(files)),
                data=sorted(files),
                _metadata={"bucket": b},
            )
            for b, files in sorted(buckets.items())
        ]
        Pipeline("exact_dedup_find", [DuplicateFinder(self.output_path)]).run(executor, groups)
        lists = fs.expand_paths(self.output_path, [".parquet"], "exact dedup")
        return sum(
            pq.ParquetFile(pa.BufferReader(fs.read_bytes(f))).metadata.num_rows for f in lists
        )

    def removal_stage(self) -> ExactDuplicateRemoval:
        """The stage that drops the duplicates found, for the pipeline that keeps the rest."""
        return ExactDuplicateRemoval(self.output_path, self.id_field)
