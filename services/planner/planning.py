"""From a submission to a plan: validate everything before anything is published.

`plan_job` is pure apart from writing the job's first tasks to the store (content-addressed,
so a repeat writes the same bytes): it raises `Rejected` with a message for the submitter when
the job cannot run, and otherwise returns the job record and the first manifests (one task
each). Every path a job names is checked: what it reads must be under the deployment's input
roots, what it writes under its output root, both after normalising (`..`, symlinks).

A continuous job is planned without its first tasks: its input is watched instead
(`services.planner.ingest`), so it needs a first stage that reads files. A stage deduplicating
against a named index (`index:`) is pointed at the team's indexes in the store and owned by
the job, whatever the submission says.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gristmill.bus import JobSpec, StepInfo, TaskEntry, TaskManifest
from gristmill.bus.jobs import JobRecord, job_id_for
from gristmill.errors import GristmillError
from gristmill.pipeline import Pipeline
from gristmill.pipeline.portable import CodeBlob, CodeLoader
from gristmill.pipeline.spec import ClassLoader, load_spec
from gristmill.stages import get_stage_class, run_stage
from gristmill.stages.base import init_signature
from gristmill.stages.text.io.partition import FilePartitioningStage
from gristmill.store import StoreWriteError, TaskStore, within
from gristmill.tasks import EmptyTask, Task

__all__ = ["Rejected", "index_root", "plan_job"]

# Parameters that name where a stage writes: they must stay under the deployment's output root.
_OUTPUT_PARAMS = ("path", "drops_path", "output_path")
# Parameters that name what a stage reads: they must stay under the deployment's input roots
# (a model's files too: a job must not load, or probe, files it could not read as data).
_INPUT_PARAMS = ("file_paths", "model_path")
_GLOB = set("*?[")
# Parameters the service sets on a stage that names a dedup index.
_INDEX_PARAMS = ("index_root", "index_owner")


def index_root(store: TaskStore, team: str) -> str:
    """Where the team's named dedup indexes live (in the service's own store)."""
    return f"{store.team_root(team).rstrip('/')}/_indexes"


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
    input_roots: Sequence[str] = (),
) -> Planned:
    """Validate `spec`, plan it, store its first tasks; `Rejected` when it cannot run.
    `loader` (of the team's code; default: a new one) is used only when `trust_code`; inputs
    may be read under `input_roots` (none given: the output root)."""
    try:
        return _plan(
            spec, store, output_root, trust_code, loader, tuple(input_roots) or (output_root,)
        )
    except (Rejected, StoreWriteError):
        raise  # a failed write says nothing about the job: the planner tries again
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
    input_roots: tuple[str, ...],
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
    if spec.continuous is not None and not spec.inputs:
        raise Rejected("a continuous job needs --input: the directory, glob or URL it watches")
    _check_inputs_given(spec, load_class)
    raw = _with_index(_with_paths(spec.pipeline, spec.inputs, spec.output), store, spec, job)
    pipeline = Pipeline.from_spec(raw, load_class)
    _check_output_paths(raw, output_root)
    _check_input_paths(raw, input_roots)
    for ref in spec.initial:
        if ref.uri and not within(ref.uri, store.team_root(spec.team)):
            raise Rejected(f"initial task {ref.uri!r} is not in team {spec.team}'s store")
    stages = pipeline.build(fuse=spec.options.fuse).physical_stages()
    steps = [
        StepInfo(
            name=stage.name,
            pool="gpu" if stage.resources.requires_gpu else "cpu",
            gpus=stage.resources.gpus,
            gpu_memory_gb=stage.resources.gpu_memory_gb,
            task_timeout_s=_timeout(stage),
        )
        for stage in stages
    ]
    accepted = spec.model_copy(update={"pipeline": raw})
    fingerprint = hashlib.sha256(
        json.dumps([raw, spec.code, spec.options.fuse], sort_keys=True).encode()
    ).hexdigest()
    first_step = 0
    record_extra: dict[str, Any] = {}
    if spec.continuous is not None:
        first = []
        first_step = 1
        record_extra = _watched(spec, stages)
    elif spec.initial:
        first = [(i, "", [ref]) for i, ref in zip(spec.initial_ids, spec.initial, strict=True)]
    elif isinstance(stages[0], FilePartitioningStage) and len(stages) > 1:
        # Listing and grouping the input files is cheap and shows unreadable inputs now.
        groups: list[Task[Any]] = run_stage(stages[0], [EmptyTask()])
        if not groups:
            raise Rejected(f"step 0 '{stages[0].name}' found no input files")
        for group in groups:  # their timings would make each plan's bytes (and refs) differ
            group._stage_perf = [dataclasses.replace(p, wall_time_s=0.0) for p in group._stage_perf]
        first_step = 1
        first = [(g.task_id, g.dataset_name, [store.put(spec.team, job, 0, g)]) for g in groups]
    else:
        root = EmptyTask()
        first = [(root.task_id, "", [store.put(spec.team, job, "initial", root)])]
    record = JobRecord(
        job=job,
        spec=accepted,
        steps=steps,
        first_step=first_step,
        fingerprint=fingerprint,
        **record_extra,
    )
    manifests = [
        TaskManifest(
            job=job,
            step=first_step,
            step_name=steps[first_step].name,
            key=task_id,
            tasks=[TaskEntry(task_id=task_id, dataset=dataset, inputs=refs)],
        )
        for task_id, dataset, refs in first
    ]
    return Planned(record, manifests)


def _watched(spec: JobSpec, stages: list[Any]) -> dict[str, Any]:
    """What a continuous job's record needs to watch its input; `Rejected` if it cannot."""
    if spec.initial:
        raise Rejected("a continuous job takes its tasks from its input files, not initial tasks")
    if not isinstance(stages[0], FilePartitioningStage) or len(stages) < 2:
        raise Rejected(
            f"a continuous job needs a first stage that reads files (a reader such as "
            f"JsonlReader), not '{stages[0].name}'"
        )
    first = stages[0]
    return {"extensions": list(first.file_extensions or []), "dataset": first.dataset_name}


def _with_index(raw: dict[str, Any], store: TaskStore, spec: JobSpec, job: str) -> dict[str, Any]:
    """The spec with every stage that names a dedup `index` pointed at the team's indexes and
    owned by the job (the submission may not choose either)."""
    for position, entry in enumerate(raw.get("stages") or [], 1):
        params = entry.get("params") if isinstance(entry, dict) else None
        if not isinstance(params, dict) or params.get("index") is None:
            continue
        for key in _INDEX_PARAMS:
            if key in params:
                raise Rejected(
                    f"stage #{position} '{entry.get('stage')}': {key} is set by the service "
                    f"(the team's indexes live in its store); name the index only"
                )
        params["index_root"] = index_root(store, spec.team)
        params["index_owner"] = job
    return raw


def _timeout(stage: Any) -> float | None:
    """A step's own task timeout: the longest any of its stages sets (None: the job's)."""
    own = [
        t for m in getattr(stage, "members", [stage]) if (t := getattr(m, "task_timeout_s", None))
    ]
    return max(own) if own else None


def _untrusted(spec: JobSpec, store: TaskStore) -> str:
    """Why a job that brings its own classes cannot run here, naming the first such class."""
    advice = (
        f"team {spec.team} may use registered stages only (its own classes run where the "
        f"teams file's trusted_teams names it and the service is not --registered-only)"
    )
    for position, entry in enumerate(spec.pipeline.get("stages") or [], 1):
        sha = entry.get("code") if isinstance(entry, dict) else None
        if sha:
            try:
                module = CodeBlob.from_bytes(store.get_code(spec.team, sha), sha).module
            except GristmillError:
                module = f"code {sha[:12]}"
            return (
                f"stage #{position} is the class {module}:{entry.get('stage')}, which is not "
                f"registered on this service; {advice}: install the stage where the service "
                f"runs, under the entry points 'gristmill.stages'"
            )
    return f"the job brings its own task classes; {advice}"


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
            if isinstance(value, str) and not within(value, output_root):
                raise Rejected(
                    f"stage #{position} '{entry['stage']}': {key} {value!r} is outside the "
                    f"output root {output_root} this service lets the team write to"
                )


def _check_input_paths(raw: dict[str, Any], roots: tuple[str, ...]) -> None:
    for position, entry in enumerate(raw["stages"], 1):
        for key, value in _nested_params(entry.get("params", {})):
            for path in [value] if isinstance(value, str) else value or []:
                if not isinstance(path, str):
                    continue
                fixed = _before_glob(path)
                if not any(within(fixed, root) for root in roots):
                    raise Rejected(
                        f"stage #{position} '{entry['stage']}': {key} {path!r} is outside the "
                        f"input roots this service lets the team read ({', '.join(roots)}; "
                        f"GRISTMILL_INPUT_ROOTS sets them)"
                    )


def _nested_params(params: Any) -> Iterator[tuple[str, Any]]:
    """The input-path parameters in `params`, and in the filters' and modifiers' params
    nested in it (a `FastTextLangId`'s model_path inside a `ScoreFilter`)."""
    if isinstance(params, dict):
        for key, value in params.items():
            if key in _INPUT_PARAMS:
                yield key, value
            elif isinstance(value, dict | list):
                yield from _nested_params(value)
    elif isinstance(params, list):
        for value in params:
            yield from _nested_params(value)


def _before_glob(path: str) -> str:
    """The part of a path before its first glob character, cut back to a whole directory."""
    cut = next((i for i, c in enumerate(path) if c in _GLOB), None)
    return path if cut is None else path[:cut].rsplit("/", 1)[0] or "/"
