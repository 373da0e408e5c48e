"""`StepRunner`: one step of one pipeline, set up once, run manifest after manifest.

A worker keeps runners per (team, pipeline fingerprint, step) inside Ray actors, so models stay
loaded and jobs with the same pipeline reuse them. The runner reads each task's inputs (inline,
or from the store, checked to be the team's), runs the stage, and stores what one manifest's
tasks made together (`TaskStore.put_tasks`): running a manifest again writes the same names.
Data never passes through the worker's event loop, only `DataRef`s. `progress()` answers while
`run()` works (the actor runs two calls at once), so the worker can stop a task that hangs.
"""

from __future__ import annotations

import socket
import time
import traceback
from typing import Any

import pyarrow as pa

from gristmill.bus import DataRef, TaskManifest
from gristmill.bus.jobs import JobRecord
from gristmill.errors import GristmillError, StageError
from gristmill.pipeline import Pipeline
from gristmill.pipeline.portable import CodeLoader
from gristmill.stages import NodeInfo, WorkerMetadata, run_stage
from gristmill.store import TaskStore
from gristmill.tasks import (
    WRITTEN_KEY,
    FileGroupTask,
    Task,
    check_task_id,
    drop_count,
    drop_groups,
    drops_by_stage,
    iter_drops,
)

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
        self._current: tuple[str, float] | None = None
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

    def run(self, manifests: list[bytes]) -> list[list[dict[str, Any]]]:
        """Run every task of each manifest on its own; per manifest, one result per task, in
        order: `ok` with the output refs, ids and counts, or not `ok` with the error and its
        traceback."""
        try:
            return [self._manifest(TaskManifest.from_json(raw)) for raw in manifests]
        finally:
            self._current = None

    def release(self) -> None:
        """Give the memory Arrow keeps for reuse back to the system (an idle actor should not
        sit on the buffers of its last batch; between calls the reuse is worth keeping)."""
        pa.default_memory_pool().release_unused()

    def progress(self) -> tuple[str, float] | None:
        """The task running now and for how many seconds, or None between calls."""
        current = self._current
        return None if current is None else (current[0], time.monotonic() - current[1])

    def teardown(self) -> None:
        """Let the stage release what it holds."""
        self.stage.teardown()

    def _manifest(self, manifest: TaskManifest) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        made: list[list[Task[Any]]] = []
        fates: list[dict[str, Any]] = []
        for entry in manifest.tasks:
            self._current = (entry.task_id, time.monotonic())
            result, outputs = self._task(entry.task_id, entry.inputs, fates)
            results.append(result)
            made.append(outputs)
        if not all(r["ok"] for r in results):
            return results  # the manifest is retried task by task: nothing of it is kept
        started = time.time_ns()
        try:
            flat = [task for outputs in made for task in outputs]
            stored = self.store.put_tasks(self.team, manifest.job, self.step, manifest.key, flat)
            if fates:
                self.store.put_fates(self.team, manifest.job, self.step, manifest.key, fates)
        except GristmillError as exc:
            return [_failure(exc, traceback.format_exc()) for _ in manifest.tasks]
        written = {(r.uri, r.offset): r.bytes for r in stored if r.uri}
        # the write is the manifest's: its span goes under the first task's attempt
        results[0]["write"] = (started, time.time_ns(), sum(written.values()), len(fates))
        refs = iter(stored)
        for result, outputs in zip(results, made, strict=True):
            # as plain fields: a tuple crosses the actor boundary cheaper than a model
            result["refs"] = [_fields(next(refs)) for _ in outputs]
        return results

    def _task(
        self, task_id: str, inputs: list[Any], fates: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], list[Task[Any]]]:
        """Run one task; add what became of its documents to `fates`."""
        read_from = time.time_ns()
        try:
            tasks = [self.store.get(ref, self.team) for ref in inputs]
            read_to = time.time_ns()
            items_in = sum(t.num_items for t in tasks)
            drops_in = sum(drop_count(t) for t in tasks)
            known = {id(g) for t in tasks for g in drop_groups(t)}
            started = time.perf_counter()
            outputs = run_stage(self.stage, tasks)
            wall = time.perf_counter() - started
            for out in outputs:
                check_task_id(out.task_id, f"stage '{self.stage.name}' made a task whose")
        except Exception as exc:
            detail = exc.traceback if isinstance(exc, StageError) else traceback.format_exc()
            return _failure(exc, detail), []
        new = [g for out in outputs for g in drop_groups(out) if id(g) not in known]
        where = {"step": self.step, "task": task_id}
        fates += [{**r, **where, "fate": "dropped"} for r in iter_drops(new)]
        for out in outputs:
            for entry in out._metadata.pop(WRITTEN_KEY, ()):
                fates.append({**entry, **where, "fate": "kept"})
        return {
            "ok": True,
            "output_ids": [out.task_id for out in outputs],
            "datasets": [out.dataset_name for out in outputs],
            "items_in": items_in,
            "items_out": sum(_documents(out) for out in outputs),
            "items_dropped": max(0, sum(drop_count(out) for out in outputs) - drops_in),
            "dropped_by": drops_by_stage(new),
            "wall_time_s": wall,
            "read": (read_from, read_to, sum(ref.bytes for ref in inputs)),
        }, outputs


def _fields(ref: DataRef) -> tuple[str, int, str, int, int, str, int]:
    return (ref.uri, ref.offset, ref.inline, ref.rows, ref.bytes, ref.sha256, ref.part)


def _failure(exc: BaseException, detail: str) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": detail}


def _documents(task: Task[Any]) -> int:
    """Documents a task stands for: its items, or for a writer's list of written files, the
    documents the writer received (its perf entry is the task's last)."""
    if isinstance(task, FileGroupTask) and task._stage_perf:
        return task._stage_perf[-1].items_in
    return task.num_items
