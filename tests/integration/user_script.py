"""A user's script, shaped as the quickstart is: its task type and stages live in `__main__`, so
Ray sends them to its workers by value. It runs one pipeline on LocalExecutor, XennaExecutor
(streaming) and RayDataExecutor one after another in this one process and prints each run's
outputs (for test_executor_parity.py; `.venv/bin/python tests/integration/user_script.py` runs
it by hand, on a Ray of its own).
"""

from __future__ import annotations

import hashlib
import json
import random

import pandas as pd

from gristmill import EmptyTask, LocalExecutor, Pipeline, ProcessingStage, Resources, Task
from gristmill.executors import RayDataExecutor, XennaExecutor
from gristmill.executors.ray_cluster import ray_session
from gristmill.stages import WorkerMetadata

WORDS = ["the", "mill", "grinds", "good", "grain", "slowly", "river", "turns", "wheel"]


class SampleTask(Task[pd.DataFrame]):
    """A batch of sentences, one per row."""

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return "sentence" in self.data.columns


class TaskCreationStage(ProcessingStage[EmptyTask, SampleTask]):
    """`num_tasks` tasks of seeded random sentences (it fans out: its step ends here)."""

    def __init__(self, num_tasks: int = 5):
        self.num_tasks = num_tasks

    def process(self, task: EmptyTask) -> list[SampleTask]:
        rng = random.Random(7)
        return [
            SampleTask(
                dataset_name="script",
                data=pd.DataFrame(
                    {"sentence": [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in "abc"]}
                ),
            )
            for _ in range(self.num_tasks)
        ]


class WordCountStage(ProcessingStage[SampleTask, SampleTask]):
    """Adds `word_count` (a plain map stage: a Ray task on Ray Data)."""

    def process(self, task: SampleTask) -> SampleTask:
        task.data["word_count"] = task.data["sentence"].str.split().str.len()
        return task


class GoodWordsStage(ProcessingStage[SampleTask, SampleTask]):
    """Counts good words with a lexicon loaded in setup (an actor on Ray Data, batches of 2)."""

    resources = Resources(cpus=0.5)
    batch_size = 2

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self.lexicon = {"good", "grain"}

    def process(self, task: SampleTask) -> SampleTask:
        task.data["good"] = task.data["sentence"].map(
            lambda s: sum(w in self.lexicon for w in s.split())
        )
        return task


def fingerprint(tasks: list[Task[pd.DataFrame]]) -> list[list[object]]:
    """Sorted (class, task id, content hash, stages passed) of every output task."""
    rows: list[list[object]] = []
    for task in tasks:
        content = task.data.to_json(orient="records")
        digest = hashlib.sha256(content.encode()).hexdigest()
        kind = f"{type(task).__module__}:{type(task).__qualname__}"
        rows.append([kind, task.task_id, digest, [p.stage_name for p in task._stage_perf]])
    return sorted(rows, key=lambda row: str(row[1]))


def main() -> None:
    pipeline = Pipeline("script", [TaskCreationStage(), WordCountStage(), GoodWordsStage()])
    runs = {"steps": len(pipeline.build().steps)}
    with ray_session(dashboard=True):  # one Ray for both Ray executors (xenna needs the dashboard)
        for name, executor in [
            ("local", LocalExecutor()),
            ("xenna-streaming", XennaExecutor({"execution_mode": "streaming"})),
            ("ray-data", RayDataExecutor()),
        ]:
            runs[name] = fingerprint(pipeline.run(executor))
    print("RESULT " + json.dumps(runs))


if __name__ == "__main__":
    main()
