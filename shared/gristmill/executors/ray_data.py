"""`RayDataExecutor`: runs the steps as Ray Data `map_batches` operations.

Tasks travel between steps as Arrow: each row of the dataset is one task, serialised with
`Task.to_bytes()` (a JSON header and Arrow IPC, never pickle), so Ray Data moves them as ordinary
binary blocks. Steps that set something up (`setup`, `setup_on_node`) run in actor pools that
keep it; the others run as tasks. Every batch reports its output ids to the run's ledger actor,
which stops the run when two inputs of a step make one id (`gristmill.executors.ray_ledger`).
Outputs are returned sorted by task id.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from gristmill.executors.base import BaseExecutor, prepare_initial_tasks
from gristmill.executors.gpus import gpu_memory_gb
from gristmill.executors.placement import fit_cpus, gpu_request
from gristmill.executors.ray_cluster import original_error, ray_session
from gristmill.executors.ray_ledger import run_and_record, run_ledger
from gristmill.stages import FusedStage, NodeInfo, ProcessingStage, WorkerMetadata
from gristmill.tasks import Task
from gristmill.tasks.registry import registered_task_types

__all__ = ["RayDataExecutor"]

AnyStage = ProcessingStage[Any, Any]
COLUMN = "task"


def encode(tasks: list[Task[Any]]) -> pa.Table:
    """Tasks as a one-column table of their bytes."""
    return pa.table({COLUMN: pa.array([t.to_bytes() for t in tasks], pa.large_binary())})


def decode(table: pa.Table) -> list[Task[Any]]:
    """The inverse of `encode`."""
    return [Task.from_bytes(b) for b in table.column(COLUMN).to_pylist()]


def _needs_actor(stage: AnyStage) -> bool:
    """Whether the stage keeps state set up before its first task (so it needs a long-lived
    actor rather than a task per batch). A fused step needs one when any member does."""
    if isinstance(stage, FusedStage):
        return any(_needs_actor(member) for member in stage.members)
    cls = type(stage)
    return (
        cls.setup is not ProcessingStage.setup
        or cls.setup_on_node is not ProcessingStage.setup_on_node
        or cls.teardown is not ProcessingStage.teardown
    )


def _setup_on_node_once(stage: AnyStage, run_id: str, step: int) -> None:
    """`setup_on_node` the first time any worker of this step on this machine gets here."""
    marker = Path(tempfile.gettempdir()) / "gristmill-node-setup" / f"{run_id}-{step}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{marker}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            stage.setup_on_node(NodeInfo(node_id=os.uname().nodename), WorkerMetadata())
            marker.touch()


class _Worker:
    """Runs one step's stage on batches of serialised tasks (as a task, or as a pool actor)."""

    def __init__(
        self, stage: AnyStage, task_types: list[type[Any]], run_id: str, step: int, ledger: Any
    ):
        # Holding the task classes makes Ray bring them to this process (and register them)
        # before any task of theirs is decoded here.
        self.task_types = task_types
        self.stage = stage
        self.step = step
        self.ledger = ledger
        if _needs_actor(stage):
            _setup_on_node_once(stage, run_id, step)
            stage.setup(WorkerMetadata(worker_id=f"{os.getpid()}"))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return encode(run_and_record(self.stage, decode(batch), self.step, self.ledger))

    def __del__(self) -> None:
        if _needs_actor(self.stage):
            self.stage.teardown()


def _run_batch(
    batch: pa.Table, stage: AnyStage, task_types: list[type[Any]], step: int, ledger: Any
) -> pa.Table:
    """Run one step's stage on a batch of serialised tasks, as a stateless Ray task."""
    return encode(run_and_record(stage, decode(batch), step, ledger))


class RayDataExecutor(BaseExecutor):
    """Runs on Ray Data. Config keys:

    - `actor_pool_size`: actors per step that sets something up (default: the stage's
      `num_workers()`, else a pool that grows from one actor to as many as its CPU share fits);
    - `fit_cpus`: shrink CPU requests proportionally when the steps together ask for more CPUs
      than the cluster can give while leaving room for Ray Data's own work (default True).

    Ray is started (without the dashboard) unless one is running or `RAY_ADDRESS` names a
    cluster; see `gristmill.executors.ray_cluster`. Teardown of actor-pool stages runs when Ray
    Data releases the actors.
    """

    config_keys = frozenset({"actor_pool_size", "fit_cpus"})

    def execute(
        self, stages: list[AnyStage], initial_tasks: list[Task[Any]] | None = None
    ) -> list[Task[Any]]:
        """Run `stages` on Ray Data; returns the last step's outputs sorted by task id."""
        tasks = prepare_initial_tasks(initial_tasks)
        if not tasks:
            return []
        with ray_session(), run_ledger() as ledger:
            import ray
            import ray.data

            cluster: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
            cpus = [s.resources.cpus for s in stages]
            if self.config.get("fit_cpus", True):
                # Ray Data schedules its own operators too: leave them a share of the CPUs.
                cpus = fit_cpus(cpus, max(cluster.get("CPU", 0.0) - 0.5, 0.5))
            card_gb = gpu_memory_gb()
            task_types = [
                t for t in registered_task_types() if not t.__module__.startswith("gristmill.")
            ]
            run_id = uuid.uuid4().hex
            # A failing stage's own StageError (stage, task, cause) should reach the caller, not
            # Ray Data's generic wrapper of it.
            ray.data.DataContext.get_current().raise_original_map_exception = True
            dataset: Any = ray.data.from_arrow([encode([t]) for t in tasks])
            for step, (stage, stage_cpus) in enumerate(zip(stages, cpus, strict=True)):
                gpus = gpu_request(stage.name, stage.resources, cluster.get("GPU", 0.0), card_gb)
                options: dict[str, Any] = {
                    "batch_size": stage.batch_size,
                    "batch_format": "pyarrow",
                    "num_cpus": stage_cpus,
                }
                if gpus:
                    options["num_gpus"] = gpus
                if _needs_actor(stage):
                    dataset = dataset.map_batches(
                        _Worker,
                        fn_constructor_args=(stage, task_types, run_id, step, ledger),
                        compute=self._pool(stage, stage_cpus, cluster.get("CPU", 1.0)),
                        **options,
                    )
                else:
                    dataset = dataset.map_batches(
                        _run_batch,
                        fn_kwargs={
                            "stage": stage,
                            "task_types": task_types,
                            "step": step,
                            "ledger": ledger,
                        },
                        **options,
                    )
            try:
                rows = dataset.take_all()  # the dataset runs here
            except Exception as exc:
                raise original_error(exc) from exc
        outputs: list[Task[Any]] = [Task.from_bytes(row[COLUMN]) for row in rows]
        return sorted(outputs, key=lambda t: t.task_id)

    def _pool(self, stage: AnyStage, stage_cpus: float, cluster_cpus: float) -> Any:
        import ray.data

        pinned = self.config.get("actor_pool_size") or stage.num_workers()
        if pinned:
            return ray.data.ActorPoolStrategy(size=int(pinned))
        most = max(1, int(cluster_cpus // max(stage_cpus, 0.01)))
        return ray.data.ActorPoolStrategy(min_size=1, max_size=most)
