"""From a submission to a plan: validate everything before anything is published.

`plan_job` is pure apart from writing the job's first tasks to the store (deterministic paths,
so a repeat writes the same bytes): it raises `Rejected` with a message for the submitter when
the job cannot run, and otherwise returns the job record and the first manifests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from gristmill.bus import JobSpec, StepInfo, TaskManifest
from gristmill.bus.jobs import JobRecord, job_id_for
from gristmill.errors import GristmillError
from gristmill.pipeline import Pipeline
from gristmill.pipeline.portable import CodeBlob, CodeLoader
from gristmill.pipeline.spec import ClassLoader, load_spec
from gristmill.stages import get_stage_class, run_stage
from gristmill.stages.base import init_signature
from gristmill.stages.text.io.partition import FilePartitioningStage
from gristmill.store import TaskStore
from gristmill.tasks import EmptyTask, Task

__all__ = ["Rejected", "plan_job"]

# Parameters that name where a stage writes: they must stay under the deployment's output root.
_OUTPUT_PARAMS = ("path", "drops_path", "output_path")


class Rejected(GristmillError):
    """A submission the service will not run; the message says why."""


@dataclass(frozen=True)
class Planned:
    """An accepted job: its record and the manifests of its first tasks, in order."""

    record: JobRecord
    manifests: list[TaskManifest]


def plan_job(
    spec: JobSpec,
    store: TaskStore,
    output_root: str,
    trust_code: bool,
    loader: CodeLoader | None = None,
) -> Planned:
    """Validate `spec`, plan it, store its first tasks; `Rejected` when it cannot run.
    `loader` (of the team's code; default: a new one) is used only when `trust_code`."""
    try:
        return _plan(spec, store, output_root, trust_code, loader)
    except Rejected:
        raise
    except GristmillError as exc:
        raise Rejected(str(exc)) from exc
    except Exception as exc:  # a stage's constructor or build() failing its own way
        raise Rejected(f"the job cannot be planned: {type(exc).__name__}: {exc}") from exc


def _plan(
    spec: JobSpec,
    store: TaskStore,
    output_root: str,
    trust_code: bool,
    loader: CodeLoader | None,
) -> Planned:
    job = job_id_for(spec.team, spec.request_id)
    if spec.code and not trust_code:
        raise Rejected(_untrusted(spec, store))
    if not trust_code:
        loader = None
    elif loader is None:
        loader = CodeLoader(lambda sha: store.get_code(spec.team, sha))
    for sha in spec.code if loader else ():
        loader.module(sha)  # type: ignore[union-attr]  # the job's task classes, too
    load_class = loader.load_class if loader else None
    _check_inputs_given(spec, load_class)
    raw = _with_paths(spec.pipeline, spec.inputs, spec.output)
    pipeline = Pipeline.from_spec(raw, load_class)
    _check_output_paths(raw, output_root)
    stages = pipeline.build(fuse=spec.options.fuse).physical_stages()
    steps = [
        StepInfo(
            name=stage.name,
            pool="gpu" if stage.resources.requires_gpu else "cpu",
            gpus=stage.resources.gpus,
            gpu_memory_gb=stage.resources.gpu_memory_gb,
        )
        for stage in stages
    ]
    accepted = spec.model_copy(update={"pipeline": raw})
    fingerprint = hashlib.sha256(
        json.dumps([raw, spec.code, spec.options.fuse], sort_keys=True).encode()
    ).hexdigest()
    first_step = 0
    if spec.initial:
        first = [(i, "", [ref]) for i, ref in zip(spec.initial_ids, spec.initial, strict=True)]
    elif isinstance(stages[0], FilePartitioningStage) and len(stages) > 1:
        # Listing and grouping the input files is cheap and shows unreadable inputs now.
        groups: list[Task[Any]] = run_stage(stages[0], [EmptyTask()])
        if not groups:
            raise Rejected(f"step 0 '{stages[0].name}' found no input files")
        first_step = 1
        first = [(g.task_id, g.dataset_name, [store.put(spec.team, job, 0, g)]) for g in groups]
    else:
        root = EmptyTask()
        first = [(root.task_id, "", [store.put(spec.team, job, "initial", root)])]
    record = JobRecord(
        job=job, spec=accepted, steps=steps, first_step=first_step, fingerprint=fingerprint
    )
    manifests = [
        TaskManifest(
            job=job,
            step=first_step,
            step_name=steps[first_step].name,
            task_id=task_id,
            dataset=dataset,
            inputs=refs,
        )
        for task_id, dataset, refs in first
    ]
    return Planned(record, manifests)


def _untrusted(spec: JobSpec, store: TaskStore) -> str:
    """Why a job that brings its own classes cannot run here, naming the first such class."""
    for position, entry in enumerate(spec.pipeline.get("stages") or [], 1):
        sha = entry.get("code") if isinstance(entry, dict) else None
        if sha:
            try:
                module = CodeBlob.from_bytes(store.get_code(spec.team, sha), sha).module
            except GristmillError:
                module = f"code {sha[:12]}"
            return (
                f"stage #{position} is the class {module}:{entry.get('stage')}, which is not "
                f"registered on this service; it runs registered stages only (install the "
                f"stage where the service runs, under the entry points 'gristmill.stages')"
            )
    return "this service runs registered stages only, and the job brings its own task classes"


def _with_paths(pipeline: dict[str, Any], inputs: list[str], output: str | None) -> dict[str, Any]:
    """The spec with `inputs` as the first stage's `file_paths` and `output` as the last
    stage's `path` (a copy; the submission is left as sent)."""
    raw = copy.deepcopy(pipeline)
    entries = raw.get("stages") if isinstance(raw, dict) else None
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        return raw  # load_spec explains what is wrong with it
    if inputs:
        entries[0].setdefault("params", {})["file_paths"] = list(inputs)
    if output is not None:
        entries[-1].setdefault("params", {})["path"] = output
    return raw


def _check_inputs_given(spec: JobSpec, load_class: ClassLoader | None) -> None:
    """Inputs need a first stage that takes `file_paths` (checked before they are added)."""
    if not spec.inputs:
        return
    first = load_spec(spec.pipeline).stages[0]
    if first.code is None:
        cls = get_stage_class(first.stage)
    elif load_class is not None:
        cls = load_class(first.code, first.stage)
    else:
        return  # refused as untrusted code elsewhere
    if "file_paths" not in init_signature(cls).parameters:
        raise Rejected(f"inputs were given, but the first stage '{first.stage}' reads no files")


def _check_output_paths(raw: dict[str, Any], output_root: str) -> None:
    for position, entry in enumerate(raw["stages"], 1):
        for key in _OUTPUT_PARAMS:
            value = entry.get("params", {}).get(key)
            if isinstance(value, str) and not _within(value, output_root):
                raise Rejected(
                    f"stage #{position} '{entry['stage']}': {key} {value!r} is outside the "
                    f"output root {output_root} this service lets the team write to"
                )


def _within(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (local paths resolved; URLs compared by prefix)."""
    if urlparse(path).scheme not in ("", "file") or urlparse(root).scheme not in ("", "file"):
        return path.rstrip("/") == root.rstrip("/") or path.startswith(root.rstrip("/") + "/")
    resolved = os.path.realpath(urlparse(path).path if path.startswith("file:") else path)
    base = os.path.realpath(urlparse(root).path if root.startswith("file:") else root)
    return os.path.commonpath([resolved, base]) == base
