"""`LocalExecutor`: the in-process reference executor every other backend must agree with."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gristmill.errors import GristmillError, StageError
from gristmill.executors.base import (
    BaseExecutor,
    StageTotals,
    TaskIdLedger,
    prepare_initial_tasks,
)
from gristmill.stages import NodeInfo, ProcessingStage, WorkerMetadata, run_stage_with_parents
from gristmill.tasks import Task, drop_count

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)

AnyStage = ProcessingStage[Any, Any]
AnyTask = Task[Any]


class LocalExecutor(BaseExecutor):
    """Runs every stage in this process, one worker per stage.

    Tasks stream depth-first: each batch goes through the remaining stages before the next is
    read, so memory holds about one batch per stage rather than the whole dataset. Every stage is
    set up (`setup_on_node`, then `setup`) before the first task and torn down after the last,
    also when a stage fails. Outputs come back in a deterministic order. Per-step totals of the
    last run are in `self.totals`, in step order. An output id that two inputs of one step made
    stops the run (`TaskIdCollisionError`). No config keys.
    """

    def execute(
        self, stages: list[AnyStage], initial_tasks: list[AnyTask] | None = None
    ) -> list[AnyTask]:
        """Run `stages` in order over `initial_tasks` (default: one `EmptyTask`)."""
        tasks = prepare_initial_tasks(initial_tasks)
        self.totals = [StageTotals(stage.name) for stage in stages]
        node = NodeInfo(node_id=socket.gethostname())
        worker = WorkerMetadata(worker_id="local-0")
        ready: list[AnyStage] = []
        try:
            for stage in stages:
                _guard(stage, "setup_on_node", lambda s=stage: s.setup_on_node(node, worker))
                _guard(stage, "setup", lambda s=stage: s.setup(worker))
                ready.append(stage)
            stream: Iterator[AnyTask] = iter(tasks)
            ledger = TaskIdLedger()
            for step, (stage, totals) in enumerate(zip(stages, self.totals, strict=True)):
                stream = _Step(step, stage, totals, ledger).through(stream)
            outputs = list(stream)
        except BaseException:
            _tear_down(ready, quiet=True)  # the original error is the one worth seeing
            raise
        _tear_down(ready)
        return outputs


@dataclass
class _Step:
    """One step of a run: its stage, its totals, and the run's ledger of output ids."""

    index: int
    stage: AnyStage
    totals: StageTotals
    ledger: TaskIdLedger

    def through(self, upstream: Iterator[AnyTask]) -> Iterator[AnyTask]:
        """The stage's outputs, called on `batch_size` tasks of `upstream` at a time."""
        batch: list[AnyTask] = []
        for task in upstream:
            batch.append(task)
            if len(batch) == self.stage.batch_size:
                yield from self.call(batch)
                batch = []
        if batch:
            yield from self.call(batch)

    def call(self, batch: list[AnyTask]) -> list[AnyTask]:
        """Run the stage on one batch; count it; refuse an output id another input made."""
        items_in = sum(t.num_items for t in batch)  # before the stage may change the tasks
        drops_in = sum(drop_count(t) for t in batch)
        started = time.perf_counter()
        made = run_stage_with_parents(self.stage, batch)
        outputs = [task for _, task in made]
        self.totals.add_call(batch, outputs, time.perf_counter() - started, items_in, drops_in)
        pairs = [(parent, task.task_id) for parent, task in made]
        collision = self.ledger.record(self.index, self.stage.name, pairs)
        if collision is not None:
            raise collision
        return outputs


def _guard(stage: AnyStage, phase: str, call: Any) -> None:
    try:
        call()
    except GristmillError:
        raise
    except Exception as exc:
        raise StageError(stage.name, exc, phase=phase) from exc


def _tear_down(stages: list[AnyStage], quiet: bool = False) -> None:
    """Tear down in reverse order; every stage gets its turn even if an earlier one fails.
    The first failure is raised afterwards unless `quiet` (then failures are only logged)."""
    failure: StageError | None = None
    for stage in reversed(stages):
        try:
            stage.teardown()
        except Exception as exc:
            log.exception("stage %s: teardown failed", stage.name)
            if failure is None:
                failure = StageError(stage.name, exc, phase="teardown")
                failure.__cause__ = exc
    if failure is not None and not quiet:
        raise failure
