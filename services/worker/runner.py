"""`StepRunner`: one step of one pipeline, set up once, run task after task.

A worker keeps one runner per (team, pipeline fingerprint, step) per slot inside a Ray actor,
so models stay loaded and jobs with the same pipeline reuse it. The runner reads a manifest's
inputs from the store, runs the stage and writes the outputs back, at paths named by the job,
the step and the output's deterministic id: running a task again writes the same files.
Data never passes through the worker's event loop, only `DataRef`s.
"""

from __future__ import annotations

import socket
import time
import traceback
from typing import Any

import pyarrow as pa

from gristmill.bus import TaskManifest
from gristmill.bus.jobs import JobRecord
from gristmill.errors import StageError
from gristmill.pipeline import Pipeline
from gristmill.pipeline.portable import CodeLoader
from gristmill.stages import NodeInfo, WorkerMetadata, run_stage
from gristmill.store import TaskStore
from gristmill.tasks import FileGroupTask, Task, drop_count

__all__ = ["StepRunner"]


class StepRunner:
    """Builds step `step` of a job's pipeline and sets it up (in an actor, once)."""

    def __init__(
        self, record_json: bytes, step: int, store_root: str, trust_code: bool, worker: str
    ):
        record = JobRecord.from_json(record_json)
        self.team = record.spec.team
        self.step = step
        self.store = TaskStore(store_root)
        loader = None
        if trust_code:
            loader = CodeLoader(lambda sha: self.store.get_code(self.team, sha))
            for sha in record.spec.code:
                loader.module(sha)
        pipeline = Pipeline.from_spec(record.spec.pipeline, loader.load_class if loader else None)
        self.stage = pipeline.build(fuse=record.spec.options.fuse).physical_stages()[step]
        metadata = WorkerMetadata(worker_id=worker)
        phase = "setup_on_node"
        try:
            self.stage.setup_on_node(NodeInfo(socket.gethostname()), metadata)
            phase = "setup"
            self.stage.setup(metadata)
        except Exception as exc:
            raise StageError(self.stage.name, exc, phase=phase) from exc

    def run(self, manifests: list[bytes]) -> list[dict[str, Any]]:
        """Run each manifest's task on its own; one result per manifest, in order: `ok` with
        the output refs and counts, or not `ok` with the error and its traceback."""
        results = [self._one(TaskManifest.from_json(raw)) for raw in manifests]
        pa.default_memory_pool().release_unused()  # an idle actor should not sit on buffers
        return results

    def teardown(self) -> None:
        """Let the stage release what it holds."""
        self.stage.teardown()

    def _one(self, manifest: TaskManifest) -> dict[str, Any]:
        try:
            tasks = [self.store.get(ref) for ref in manifest.inputs]
            items_in = sum(t.num_items for t in tasks)
            drops_in = sum(drop_count(t) for t in tasks)
            started = time.perf_counter()
            outputs = run_stage(self.stage, tasks)
            wall = time.perf_counter() - started
            refs = [self.store.put(self.team, manifest.job, self.step, out) for out in outputs]
        except Exception as exc:
            detail = exc.traceback if isinstance(exc, StageError) else traceback.format_exc()
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": detail}
        return {
            "ok": True,
            "outputs": [ref.to_json() for ref in refs],
            "output_ids": [out.task_id for out in outputs],
            "dataset": [out.dataset_name for out in outputs],
            "items_in": items_in,
            "items_out": sum(_documents(out) for out in outputs),
            "items_dropped": max(0, sum(drop_count(out) for out in outputs) - drops_in),
            "wall_time_s": wall,
        }


def _documents(task: Task[Any]) -> int:
    """Documents a task stands for: its items, or for a writer's list of written files, the
    documents the writer received (its perf entry is the task's last)."""
    if isinstance(task, FileGroupTask) and task._stage_perf:
        return task._stage_perf[-1].items_in
    return task.num_items
