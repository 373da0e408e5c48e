"""gristmill quickstart: a custom task type and three stages, run on the local executor.

Run it with `make demo` (or `.venv/bin/python examples/quickstart.py`).
"""

from __future__ import annotations

import random

import pandas as pd

from gristmill import (
    EmptyTask,
    LocalExecutor,
    Pipeline,
    ProcessingStage,
    Resources,
    Task,
    register_stage,
)

WORDS = [
    "the",
    "a",
    "data",
    "model",
    "team",
    "river",
    "bright",
    "quiet",
    "fast",
    "broken",
    "good",
    "bad",
    "fine",
    "awful",
    "lovely",
    "dull",
]
LEXICON_TEXT = "good 1\nfine 0.5\nlovely 1\nbright 0.5\nbad -1\nawful -1\nbroken -0.5\ndull -0.5"


class SampleTask(Task[pd.DataFrame]):
    """A batch of sentences, one per row."""

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return "sentence" in self.data.columns


@register_stage
class TaskCreationStage(ProcessingStage[EmptyTask, SampleTask]):
    """Makes `num_tasks` tasks of random (but seeded, so repeatable) sentences."""

    def __init__(self, num_sentences_per_task: int = 3, num_tasks: int = 4, seed: int = 7):
        self.num_sentences_per_task = num_sentences_per_task
        self.num_tasks = num_tasks
        self.seed = seed

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["sentence"]

    def process(self, task: EmptyTask) -> list[SampleTask]:
        rng = random.Random(self.seed)
        tasks = []
        for _ in range(self.num_tasks):
            sentences = [
                " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
                for _ in range(self.num_sentences_per_task)
            ]
            # No task_id: the executor derives one from the parent, this stage and the position.
            tasks.append(
                SampleTask(dataset_name="quickstart", data=pd.DataFrame({"sentence": sentences}))
            )
        return tasks


@register_stage
class WordCountStage(ProcessingStage[SampleTask, SampleTask]):
    """Adds a `word_count` column."""

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["sentence"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["word_count"]

    def process(self, task: SampleTask) -> SampleTask:
        task.data["word_count"] = task.data["sentence"].str.split().str.len()
        return task


@register_stage
class SentimentStage(ProcessingStage[SampleTask, SampleTask]):
    """Scores sentences with a lexicon loaded once per worker: a CPU stand-in for a model."""

    resources = Resources(cpus=0.5)
    batch_size = 2

    def setup(self, worker_metadata=None) -> None:
        self.lexicon = {w: float(s) for w, s in (ln.split() for ln in LEXICON_TEXT.splitlines())}

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["sentence"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], ["sentiment"]

    def process(self, task: SampleTask) -> SampleTask:
        return self.process_batch([task])[0]

    def process_batch(self, tasks: list[SampleTask]) -> list[SampleTask]:
        for task in tasks:  # one vectorised "model call" per batch of tasks
            scores = task.data["sentence"].map(
                lambda s: sum(self.lexicon.get(w, 0.0) for w in s.split())
            )
            task.data["sentiment"] = pd.cut(
                scores, [-99, -0.5, 0.5, 99], labels=["negative", "neutral", "positive"]
            ).astype(str)
        return tasks


def main() -> None:
    pipeline = (
        Pipeline("quickstart", description="seeded sentences -> word counts -> sentiment")
        .add_stage(TaskCreationStage(num_sentences_per_task=3, num_tasks=4))
        .add_stage(WordCountStage())
        .add_stage(SentimentStage())
    )
    print(pipeline.describe(), end="\n\n")
    executor = LocalExecutor()
    results = pipeline.run(executor)
    for task in results:
        print(f"task {task.task_id[:12]}  ({task.num_items} sentences)")
        print(task.data.to_string(index=False), end="\n\n")
    width = max(len(t.stage_name) for t in executor.totals)
    print(f"{'step':<{width}}  tasks in/out  items in/out")
    for t in executor.totals:
        tasks, items = f"{t.tasks_in}/{t.tasks_out}", f"{t.items_in}/{t.items_out}"
        print(f"{t.stage_name:<{width}}  {tasks:>12}  {items:>12}")
    print(f"\n{len(results)} tasks, {sum(t.num_items for t in results)} sentences scored")


if __name__ == "__main__":
    main()
