"""One run's `TaskIdLedger` as a Ray actor, which every worker of the run reports to.

Workers of a distributed run see one batch at a time; only a ledger they all share can tell
that two of them made the same output id, and from which two inputs. Each stage call reports
its (input id, output id) pairs before its outputs move on, so a collision stops the run before
the merged id reaches the next step. The actor takes no CPU, so it never competes with stages;
it costs one round trip (about a millisecond) per stage call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gristmill.executors.base import TaskIdLedger
from gristmill.stages import ProcessingStage, run_stage_with_parents
from gristmill.tasks import Task

__all__ = ["run_and_record", "run_ledger"]


@contextlib.contextmanager
def run_ledger() -> Iterator[Any]:
    """A new `TaskIdLedger` actor on the connected Ray cluster for one run, killed after it."""
    import ray

    ledger: Any = ray.remote(num_cpus=0)(TaskIdLedger).remote()
    try:
        yield ledger
    finally:
        ray.kill(ledger)


def run_and_record(
    stage: ProcessingStage[Any, Any], tasks: list[Task[Any]], step: int, ledger: Any
) -> list[Task[Any]]:
    """`run_stage`, then report the outputs' ids to `ledger`; raises `TaskIdCollisionError` when
    another input of step `step` (0-based) made one of them first."""
    import ray

    made = run_stage_with_parents(stage, tasks)
    pairs = [(parent, task.task_id) for parent, task in made]
    collision = ray.get(ledger.record.remote(step, stage.name, pairs))
    if collision is not None:
        raise collision
    return [task for _, task in made]
