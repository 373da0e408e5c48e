"""`XennaExecutor`: runs the steps as a cosmos-xenna pipeline on Ray (streaming by default).

Each step becomes a xenna stage through a thin adapter: `setup_on_node` once per node, `setup`
once per actor, `process_batch` through the same `run_stage` every executor uses (ids, lineage,
perf stats), `teardown` when the actor goes. Every call reports its output ids to the run's
ledger actor, which stops the run when two inputs of a step make one id
(`gristmill.executors.ray_ledger`). Outputs are returned sorted by task id, so a run's result
never depends on which worker finished first.
"""

from __future__ import annotations

import logging
from typing import Any

from gristmill.errors import GristmillError
from gristmill.executors.base import BaseExecutor, prepare_initial_tasks
from gristmill.executors.gpus import gpu_memory_gb
from gristmill.executors.placement import fit_cpus, gpu_request
from gristmill.executors.ray_cluster import original_error, ray_session
from gristmill.executors.ray_ledger import run_and_record, run_ledger
from gristmill.stages import NodeInfo, ProcessingStage, WorkerMetadata
from gristmill.tasks import Task

__all__ = ["XennaExecutor"]

log = logging.getLogger(__name__)

AnyStage = ProcessingStage[Any, Any]


def _adapter(stage: AnyStage, step: int, ledger: Any, cpus: float, gpus: float) -> Any:
    """A cosmos-xenna stage that runs `stage`, step `step` of the run whose output ids `ledger`
    keeps (built lazily: xenna is an optional dependency)."""
    from cosmos_xenna.pipelines import v1 as pl

    class XennaStage(pl.Stage):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.stage = stage

        @property
        def stage_batch_size(self) -> int:
            return stage.batch_size

        @property
        def required_resources(self) -> Any:
            return pl.Resources(cpus=cpus, gpus=gpus)

        def setup_on_node(self, node_info: Any, worker_metadata: Any) -> None:
            self.stage.setup_on_node(
                NodeInfo(node_id=node_info.node_id),
                WorkerMetadata(worker_id=worker_metadata.worker_id),
            )

        def setup(self, worker_metadata: Any) -> None:
            self.stage.setup(WorkerMetadata(worker_id=worker_metadata.worker_id))

        def process_data(self, tasks: list[Task[Any]]) -> list[Task[Any]]:
            return run_and_record(self.stage, tasks, step, ledger)

        def destroy(self) -> None:
            self.stage.teardown()

    XennaStage.__name__ = XennaStage.__qualname__ = f"Xenna[{stage.name}]"
    return XennaStage()


class XennaExecutor(BaseExecutor):
    """Runs on cosmos-xenna (0.5). Config keys:

    - `execution_mode`: "streaming" (default: every step runs at once, autoscaled) or "batch"
      (step after step, everything materialised between them);
    - `autoscale_interval_s` (streaming; default 3: short runs need workers early; raise it
      for long runs), `logging_interval_s` (default 60);
    - `max_retries`: extra attempts of a failing task (default 0; stages are retry-safe),
      for every step, or per step as `{step name: retries}` (others get 0);
    - `fit_cpus`: shrink CPU requests proportionally when the steps together ask for more CPUs
      than the cluster has, so every step gets a worker (default True);
    - `cpu_allocation_percentage`: share of the cluster's CPUs xenna may use (default 1.0).

    Ray is started (with the dashboard, which xenna needs) unless one is running or
    `RAY_ADDRESS` names a cluster; see `gristmill.executors.ray_cluster`.
    """

    config_keys = frozenset(
        {
            "execution_mode",
            "autoscale_interval_s",
            "logging_interval_s",
            "max_retries",
            "fit_cpus",
            "cpu_allocation_percentage",
        }
    )

    def execute(
        self, stages: list[AnyStage], initial_tasks: list[Task[Any]] | None = None
    ) -> list[Task[Any]]:
        """Run `stages` on xenna; returns the last step's outputs sorted by task id."""
        tasks = prepare_initial_tasks(initial_tasks)
        mode = str(self.config.get("execution_mode", "streaming")).upper()
        if mode not in ("STREAMING", "BATCH"):
            raise GristmillError(
                "XennaExecutor: execution_mode must be 'streaming' or 'batch', "
                f"got {mode.lower()!r}"
            )
        with ray_session(dashboard=True), run_ledger() as ledger:
            import ray
            from cosmos_xenna.pipelines import v1 as pl

            cluster: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
            specs = self._stage_specs(stages, cluster, pl, ledger)
            config = pl.PipelineConfig(
                execution_mode=pl.ExecutionMode[mode],
                return_last_stage_outputs=True,
                cpu_allocation_percentage=float(self.config.get("cpu_allocation_percentage", 1.0)),
                logging_interval_s=float(self.config.get("logging_interval_s", 60)),
                monitoring_verbosity_level=pl.VerbosityLevel.NONE,
                actor_pool_verbosity_level=pl.VerbosityLevel.NONE,
                mode_specific=pl.StreamingSpecificSpec(
                    autoscale_interval_s=float(self.config.get("autoscale_interval_s", 3)),
                    executor_verbosity_level=pl.VerbosityLevel.NONE,
                ),
            )
            try:
                outputs = pl.run_pipeline(
                    pl.PipelineSpec(input_data=tasks, stages=specs, config=config)
                )
            except Exception as exc:
                raise original_error(exc) from exc
        return sorted(outputs or [], key=lambda t: t.task_id)

    def _retries(self, step: str) -> int:
        retries = self.config.get("max_retries", 0)
        if isinstance(retries, dict):
            return int(retries.get(step, 0))
        return int(retries)

    def _stage_specs(
        self, stages: list[AnyStage], cluster: dict[str, float], pl: Any, ledger: Any
    ) -> list[Any]:
        cpus = [s.resources.cpus for s in stages]
        if self.config.get("fit_cpus", True):
            share = float(self.config.get("cpu_allocation_percentage", 1.0))
            cpus = fit_cpus(cpus, cluster.get("CPU", 0.0) * share)
        card_gb = gpu_memory_gb()
        specs = []
        for step, (stage, stage_cpus) in enumerate(zip(stages, cpus, strict=True)):
            gpus = gpu_request(stage.name, stage.resources, cluster.get("GPU", 0.0), card_gb)
            specs.append(
                pl.StageSpec(
                    _adapter(stage, step, ledger, stage_cpus, gpus),
                    num_workers=stage.num_workers(),
                    num_run_attempts_python=1 + self._retries(stage.name),
                )
            )
        return specs
