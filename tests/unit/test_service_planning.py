"""The planner's pure logic: a submission becomes a job record and its first manifests, or is
rejected with a message the submitter can act on."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from gristmill.bus import DataRef, JobOptions, JobSpec, StepInfo, TaskEntry, TaskManifest
from gristmill.bus.jobs import job_id_for
from gristmill.pipeline.portable import CodeBlob
from gristmill.stages import registered_stage_names
from gristmill.store import TaskStore
from gristmill.tasks import DocumentBatch, EmptyTask, FileGroupTask, content_task_id
from services.planner.planning import Planned, Rejected
from services.planner.planning import plan_job as _plan_job

import toy_stages  # noqa: F401  (registers MakeDocs, KeepLong, ...)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
FILES = [str(DATA / f"part-00{i}.jsonl") for i in range(3)]
FUSED = (
    "jsonl_reader+word_count+symbol_to_word+alpha_numeric+urls_ratio+repeated_lines"
    "+repeating_top_2grams+mean_word_length+punctuation+jsonl_writer"
)
OWN_CLASSES = (
    "team web may use registered stages only (its own classes run where the teams file's "
    "trusted_teams names it and the service is not --registered-only)"
)
NOT_REGISTERED = (
    f"which is not registered on this service; {OWN_CLASSES}: install the stage where the "
    f"service runs, under the entry points 'gristmill.stages'"
)

# A module a submitter sends by value: one stage class of their own.
SHOUT = CodeBlob(
    module="team_stages",
    source='''
from gristmill import DocumentBatch, ProcessingStage


class Shout(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Upper-cases the text."""

    def __init__(self, suffix: str = "!"):
        self.suffix = suffix

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return task
''',
)


def quality() -> dict[str, Any]:
    pipeline: dict[str, Any] = yaml.safe_load(
        (REPO / "examples" / "pipelines" / "quality.yaml").read_text()
    )
    return pipeline


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The output root the service lets the team write to."""
    return tmp_path / "out"


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(str(tmp_path / "store"))


def submission(out: Path, **changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "team": "web",
        "request_id": "nightly-1",
        "pipeline": quality(),
        "inputs": [str(DATA)],
        "output": str(out / "quality"),
    }
    fields.update(changes)
    return JobSpec(**fields)


def plan_job(spec: JobSpec, store: TaskStore, out: str, trust_code: bool, **more: Any) -> Planned:
    """`plan_job` on a service that lets the team read the repository's examples."""
    more.setdefault("input_roots", (str(REPO), str(Path(out).parent)))
    return _plan_job(spec, store, out, trust_code=trust_code, **more)


def rejection(spec: JobSpec, store: TaskStore, out: Path | str, trust_code: bool = False) -> str:
    with pytest.raises(Rejected) as caught:
        plan_job(spec, store, str(out), trust_code=trust_code)
    return str(caught.value)


def with_stage(position: int, **params: Any) -> dict[str, Any]:
    """The quality pipeline with `params` added to stage #`position`."""
    pipeline = quality()
    pipeline["stages"][position - 1].setdefault("params", {}).update(params)
    return pipeline


# -- accepted ---------------------------------------------------------------------------------


def test_quality_job_starts_after_partitioning_with_one_task_per_input_file(
    store: TaskStore, out: Path
) -> None:
    planned = plan_job(submission(out), store, str(out), trust_code=False)
    record = planned.record
    assert record.job == job_id_for("web", "nightly-1") == "j8fa459f60eace67"
    assert record.first_step == 1
    assert record.steps == [
        StepInfo(name="file_partitioning", pool="cpu"),
        StepInfo(name=FUSED, pool="cpu"),
    ]
    ids = [content_task_id(path) for path in FILES]
    assert [(m.job, m.step, m.step_name, m.key, m.tasks[0].parents) for m in planned.manifests] == [
        (record.job, 1, FUSED, task_id, []) for task_id in ids
    ]
    for manifest, path, task_id in zip(planned.manifests, FILES, ids, strict=True):
        [entry] = manifest.tasks
        [ref] = entry.inputs
        assert entry.task_id == task_id
        assert ref.uri.startswith(f"{store.root}/web/{record.job}/0/{task_id}.")
        assert ref.rows == 1
        task = store.get(ref, "web")
        assert isinstance(task, FileGroupTask)
        assert (task.task_id, task.dataset_name, task.data) == (task_id, "data", [path])


def test_inputs_and_output_are_written_into_the_accepted_pipeline_only(
    store: TaskStore, out: Path
) -> None:
    spec = submission(out)
    planned = plan_job(spec, store, str(out), trust_code=False)
    stages = planned.record.spec.pipeline["stages"]
    assert stages[0] == {"stage": "JsonlReader", "params": {"file_paths": [str(DATA)]}}
    assert stages[-1] == {"stage": "JsonlWriter", "params": {"path": str(out / "quality")}}
    assert planned.record.spec.model_copy(update={"pipeline": quality()}) == spec
    assert spec.pipeline == quality()  # the submission is left as sent


def test_the_same_submission_twice_names_the_same_job_and_tasks(
    store: TaskStore, out: Path
) -> None:
    first = plan_job(submission(out), store, str(out), trust_code=False)
    again = plan_job(submission(out), store, str(out), trust_code=False)
    assert again.record == first.record
    assert again.manifests == first.manifests
    other = plan_job(submission(out, request_id="nightly-2"), store, str(out), trust_code=False)
    assert other.record.job == job_id_for("web", "nightly-2") != first.record.job
    assert [m.key for m in other.manifests] == [m.key for m in first.manifests]
    assert other.record.fingerprint == first.record.fingerprint


def test_the_same_submission_twice_stores_the_same_bytes(store: TaskStore, out: Path) -> None:
    first = plan_job(submission(out), store, str(out), trust_code=False)
    again = plan_job(submission(out), store, str(out), trust_code=False)
    for ref in (m.tasks[0].inputs[0] for m in first.manifests):
        store.get(ref, "web")  # the second plan wrote the same content-addressed objects
    assert again == first


def test_without_fusion_every_stage_is_a_step(store: TaskStore, out: Path) -> None:
    spec = submission(out, options=JobOptions(fuse=False))
    planned = plan_job(spec, store, str(out), trust_code=False)
    assert [s.name for s in planned.record.steps] == [
        "file_partitioning",
        "jsonl_reader",
        "word_count",
        "symbol_to_word",
        "alpha_numeric",
        "urls_ratio",
        "repeated_lines",
        "repeating_top_2grams",
        "mean_word_length",
        "punctuation",
        "jsonl_writer",
    ]
    assert {m.step_name for m in planned.manifests} == {"jsonl_reader"}
    fused = plan_job(submission(out), store, str(out), trust_code=False)
    assert planned.record.fingerprint != fused.record.fingerprint


def test_a_pipeline_that_reads_no_files_starts_at_step_zero_from_a_stored_root_task(
    store: TaskStore, out: Path
) -> None:
    pipeline = {"name": "toy", "stages": [{"stage": "MakeDocs"}, {"stage": "AddLength"}]}
    spec = submission(out, pipeline=pipeline, inputs=[], output=None)
    planned = plan_job(spec, store, str(out), trust_code=False)
    assert planned.record.first_step == 0
    assert [s.name for s in planned.record.steps] == ["MakeDocs", "AddLength"]  # a source fans out
    [manifest] = planned.manifests
    assert (manifest.step, manifest.step_name, manifest.key) == (0, "MakeDocs", "root")
    [ref] = manifest.tasks[0].inputs
    assert ref.uri.startswith(f"{store.root}/web/{planned.record.job}/initial/root.")
    assert store.get(ref, "web") == EmptyTask()


def test_tasks_the_submitter_stored_are_the_first_tasks(store: TaskStore, out: Path) -> None:
    job = job_id_for("web", "nightly-1")
    batch = DocumentBatch(task_id="u1", data=pa.table({"text": ["one two three"]}))
    ref = store.put("web", job, "upload", batch)
    pipeline = {"name": "toy", "stages": [{"stage": "AddLength"}, {"stage": "KeepLong"}]}
    spec = submission(
        out, pipeline=pipeline, inputs=[], output=None, initial=[ref], initial_ids=["u1"]
    )
    planned = plan_job(spec, store, str(out), trust_code=False)
    assert planned.record.first_step == 0
    entry = TaskEntry(task_id="u1", inputs=[ref])
    assert planned.manifests == [
        TaskManifest(job=job, step=0, step_name="AddLength+KeepLong", key="u1", tasks=[entry])
    ]


def test_output_at_the_root_itself_is_accepted(store: TaskStore, out: Path) -> None:
    planned = plan_job(submission(out, output=str(out)), store, str(out), trust_code=False)
    assert planned.record.spec.pipeline["stages"][-1]["params"] == {"path": str(out)}


def test_url_outputs_are_checked_against_a_url_root(store: TaskStore, tmp_path: Path) -> None:
    spec = submission(tmp_path, output="memory://out/web/quality")
    plan_job(spec, store, "memory://out/web", trust_code=False)
    outside = submission(tmp_path, output="memory://out/web-other/quality")
    assert rejection(outside, store, "memory://out/web") == (
        "stage #10 'JsonlWriter': path 'memory://out/web-other/quality' is outside the output "
        "root memory://out/web this service lets the team write to"
    )


def test_a_trusting_service_plans_a_job_that_brings_its_own_stage(
    store: TaskStore, out: Path
) -> None:
    store.put_code("web", SHOUT.sha256, SHOUT.to_bytes())
    pipeline = quality()
    pipeline["stages"][1:-1] = [{"stage": "Shout", "code": SHOUT.sha256}]
    spec = submission(out, pipeline=pipeline, code=[SHOUT.sha256])
    planned = plan_job(spec, store, str(out), trust_code=True)
    assert [s.name for s in planned.record.steps] == [
        "file_partitioning",
        "jsonl_reader+Shout+jsonl_writer",
    ]
    assert len(planned.manifests) == 3


# -- rejected ---------------------------------------------------------------------------------


def test_an_unknown_stage_is_rejected_with_the_registered_names(
    store: TaskStore, out: Path
) -> None:
    pipeline = quality()
    pipeline["stages"][1]["stage"] = "WordCount"
    assert rejection(submission(out, pipeline=pipeline), store, out) == (
        f"unknown stage 'WordCount' (registered stages: {', '.join(registered_stage_names())})"
    )


def test_a_bad_parameter_type_is_rejected_naming_stage_and_parameter(
    store: TaskStore, out: Path
) -> None:
    spec = submission(out, pipeline=with_stage(2, invert="maybe"))
    assert rejection(spec, store, out) == (
        "stage #2 'ScoreFilter': bad params: invert: Input should be a valid boolean, "
        "unable to interpret input"
    )


def test_a_bad_parameter_type_of_an_inherited_constructor_is_rejected(
    store: TaskStore, out: Path
) -> None:
    spec = submission(out, pipeline=with_stage(1, fields=3))
    assert rejection(spec, store, out) == (
        "stage #1 'JsonlReader': bad params: fields: Input should be a valid list"
    )


def test_a_missing_input_path_is_rejected_naming_it(
    store: TaskStore, out: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    assert rejection(submission(out, inputs=[str(missing)]), store, out) == (
        f"file_partitioning: no such file or directory: {missing}"
    )


def test_inputs_with_no_files_to_read_are_rejected(
    store: TaskStore, out: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rejection(submission(out, inputs=[str(empty)]), store, out) == (
        f"file_partitioning: no files ending in .jsonl, .json, .jsonl.gz, .json.gz, .jsonl.zst, "
        f".json.zst under {empty}"
    )
    spec = submission(out, pipeline=with_stage(1, limit=0))
    assert rejection(spec, store, out) == "step 0 'file_partitioning' found no input files"


@pytest.mark.parametrize(
    "output", ["elsewhere/quality", "out/../elsewhere", "out-other/quality", "out-link/quality"]
)
def test_an_output_outside_the_output_root_is_rejected(
    store: TaskStore, out: Path, tmp_path: Path, output: str
) -> None:
    out.mkdir()
    (tmp_path / "out-link").symlink_to(tmp_path / "elsewhere")
    target = str(tmp_path / output)
    assert rejection(submission(out, output=target), store, out) == (
        f"stage #10 'JsonlWriter': path {target!r} is outside the output root {out} this "
        f"service lets the team write to"
    )


def test_a_symlink_inside_the_root_that_leads_out_of_it_is_rejected(
    store: TaskStore, out: Path, tmp_path: Path
) -> None:
    out.mkdir()
    (out / "escape").symlink_to(tmp_path)
    target = str(out / "escape" / "quality")
    assert rejection(submission(out, output=target), store, out) == (
        f"stage #10 'JsonlWriter': path {target!r} is outside the output root {out} this "
        f"service lets the team write to"
    )


def test_a_drops_path_outside_the_output_root_is_rejected(
    store: TaskStore, out: Path, tmp_path: Path
) -> None:
    drops = str(tmp_path / "drops")
    spec = submission(out, pipeline=with_stage(10, drops_path=drops))
    assert rejection(spec, store, out) == (
        f"stage #10 'JsonlWriter': drops_path {drops!r} is outside the output root {out} this "
        f"service lets the team write to"
    )
    inside = submission(out, pipeline=with_stage(10, drops_path=str(out / "drops")))
    plan_job(inside, store, str(out), trust_code=False)


def test_inputs_given_to_a_pipeline_that_reads_no_files_are_rejected(
    store: TaskStore, out: Path
) -> None:
    pipeline = {"name": "toy", "stages": [{"stage": "MakeDocs"}, {"stage": "AddLength"}]}
    spec = submission(out, pipeline=pipeline, output=None)
    assert rejection(spec, store, out) == (
        "inputs were given, but the first stage 'MakeDocs' reads no files"
    )


def test_code_brought_to_a_service_that_does_not_trust_it_is_rejected_naming_the_class(
    store: TaskStore, out: Path
) -> None:
    store.put_code("web", SHOUT.sha256, SHOUT.to_bytes())
    pipeline = quality()
    pipeline["stages"][1] = {"stage": "Shout", "code": SHOUT.sha256}
    spec = submission(out, pipeline=pipeline, code=[SHOUT.sha256])
    assert (
        rejection(spec, store, out) == f"stage #2 is the class team_stages:Shout, {NOT_REGISTERED}"
    )


def test_untrusted_code_missing_from_the_store_is_named_by_its_hash(
    store: TaskStore, out: Path
) -> None:
    pipeline = quality()
    pipeline["stages"][1] = {"stage": "Shout", "code": SHOUT.sha256}
    spec = submission(out, pipeline=pipeline, code=[SHOUT.sha256])
    assert rejection(spec, store, out) == (
        f"stage #2 is the class code {SHOUT.sha256[:12]}:Shout, {NOT_REGISTERED}"
    )


def test_untrusted_task_classes_alone_are_rejected(store: TaskStore, out: Path) -> None:
    spec = submission(out, code=[SHOUT.sha256])
    assert rejection(spec, store, out) == (f"the job brings its own task classes; {OWN_CLASSES}")


def test_a_code_entry_not_listed_in_the_jobs_code_is_still_refused(
    store: TaskStore, out: Path
) -> None:
    pipeline = quality()
    pipeline["stages"][1] = {"stage": "Shout", "code": SHOUT.sha256}
    assert rejection(submission(out, pipeline=pipeline), store, out) == (
        f"stage #2 'Shout' is the submitter's own class (code {SHOUT.sha256[:12]}), not a "
        f"registered stage; this service runs registered stages only"
    )


def test_a_trusting_service_rejects_code_missing_from_the_store(
    store: TaskStore, out: Path
) -> None:
    spec = submission(out, code=[SHOUT.sha256])
    assert rejection(spec, store, out, trust_code=True) == (
        f"code {SHOUT.sha256[:12]} is not in the store of team web"
    )


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"name": "q", "stages": "JsonlReader"}, "pipeline spec: stages: Input should be a valid list"),
        ({"name": "q", "stages": []}, "pipeline spec: stages: List should have at least 1 item after validation, not 0"),
        ({"name": "q", "stages": ["JsonlReader"]}, "pipeline spec: stages.0: Input should be a valid dictionary or instance of StageSpec"),
        ({"stages": [{"stage": "JsonlReader"}]}, "pipeline spec: name: Field required"),
        ({"name": "q", "stages": [{"stage": "JsonlReader", "param": {}}]}, "pipeline spec: stages.0.param: unknown parameter"),
    ],
    ids=["stages-not-a-list", "no-stages", "stage-not-a-mapping", "no-name", "misspelt-key"],
)  # fmt: skip
def test_a_malformed_pipeline_is_rejected_saying_what_is_wrong(
    store: TaskStore, out: Path, pipeline: dict[str, Any], message: str
) -> None:
    assert rejection(submission(out, pipeline=copy.deepcopy(pipeline)), store, out) == message


def test_a_rejected_submission_writes_nothing(store: TaskStore, out: Path) -> None:
    spec = submission(out, pipeline=with_stage(2, invert="maybe"))
    with pytest.raises(Rejected, match=re.escape("stage #2 'ScoreFilter': bad params: invert")):
        plan_job(spec, store, str(out), trust_code=False)
    assert not Path(store.root).exists()


@pytest.mark.parametrize("inputs", ["/etc", "{tmp}/data/../../etc/passwd", "{tmp}/other/*.jsonl"])
def test_inputs_outside_the_input_roots_are_rejected_naming_the_setting(
    store: TaskStore, out: Path, tmp_path: Path, inputs: str
) -> None:
    path = inputs.format(tmp=tmp_path)
    (tmp_path / "data").mkdir()
    spec = submission(out, inputs=[path])
    with pytest.raises(Rejected) as caught:
        _plan_job(spec, store, str(out), trust_code=False, input_roots=[str(tmp_path / "data")])
    assert str(caught.value) == (
        f"stage #1 'JsonlReader': file_paths {path!r} is outside the input roots this service "
        f"lets the team read ({tmp_path / 'data'}; GRISTMILL_INPUT_ROOTS sets them)"
    )


def test_without_input_roots_a_job_reads_only_under_its_output_root(
    store: TaskStore, out: Path
) -> None:
    with pytest.raises(Rejected, match=r"file_paths .* is outside the input roots this service lets the team read \(.*/out; GRISTMILL_INPUT_ROOTS sets them\)"):  # fmt: skip
        _plan_job(submission(out), store, str(out), trust_code=False)


def test_an_output_that_climbs_out_of_its_root_is_rejected(store: TaskStore, out: Path) -> None:
    climbing = f"{out}/a/../../elsewhere"
    assert rejection(submission(out, output=climbing), store, out) == (
        f"stage #10 'JsonlWriter': path {climbing!r} is outside the output root {out} this "
        f"service lets the team write to"
    )
    url = submission(out, output="memory://out/web/../other")
    assert rejection(url, store, "memory://out/web").startswith(
        "stage #10 'JsonlWriter': path 'memory://out/web/../other' is outside the output root"
    )


def test_an_initial_task_outside_the_teams_store_is_rejected(store: TaskStore, out: Path) -> None:
    pipeline = {"name": "toy", "stages": [{"stage": "AddLength"}]}
    forged = DataRef(uri="/etc/passwd", rows=1, bytes=1, sha256="0" * 64)
    spec = submission(out, pipeline=pipeline, inputs=[], output=None, initial=[forged], initial_ids=["t"])  # fmt: skip
    assert rejection(spec, store, out) == "initial task '/etc/passwd' is not in team web's store"


def test_a_stage_sets_its_own_task_timeout_and_a_fused_step_takes_the_largest(
    store: TaskStore, out: Path
) -> None:
    pipeline = quality()
    pipeline["stages"][1]["with"] = {"task_timeout_s": 30}
    pipeline["stages"][2]["with"] = {"task_timeout_s": 90}
    planned = plan_job(submission(out, pipeline=pipeline), store, str(out), trust_code=False)
    assert [s.task_timeout_s for s in planned.record.steps] == [None, 90.0]
    plain = plan_job(submission(out, request_id="plain"), store, str(out), trust_code=False)
    assert [s.task_timeout_s for s in plain.record.steps] == [None, None]  # the job's applies
    assert plain.record.spec.options.task_timeout_s == 3600.0


def test_a_model_outside_the_input_roots_is_rejected(store: TaskStore, out: Path) -> None:
    pipeline = quality()
    pipeline["stages"].insert(1, {"stage": "QualityClassifier", "params": {"model_path": "/etc/models/quality"}})  # fmt: skip
    assert rejection(submission(out, pipeline=pipeline), store, out) == (
        "stage #2 'QualityClassifier': model_path '/etc/models/quality' is outside the input "
        f"roots this service lets the team read ({REPO}, {out.parent}; GRISTMILL_INPUT_ROOTS "
        f"sets them)"
    )


def test_a_model_inside_a_filters_params_is_checked_too(store: TaskStore, out: Path) -> None:
    langid = {"filter": "FastTextLangId", "params": {"model_path": "/root/lid.176.bin"}}
    pipeline = quality()
    pipeline["stages"].insert(1, {"stage": "ScoreFilter", "params": {"filter_obj": langid}})
    assert rejection(submission(out, pipeline=pipeline), store, out) == (
        "stage #2 'ScoreFilter': model_path '/root/lid.176.bin' is outside the input roots this "
        f"service lets the team read ({REPO}, {out.parent}; GRISTMILL_INPUT_ROOTS sets them)"
    )


def test_the_bundled_language_model_needs_no_path(store: TaskStore, out: Path) -> None:
    langid = {"filter": "FastTextLangId", "params": {"languages": ["EN"]}}
    pipeline = quality()
    pipeline["stages"].insert(1, {"stage": "ScoreFilter", "params": {"filter_obj": langid}})
    planned = plan_job(submission(out, pipeline=pipeline), store, str(out), trust_code=False)
    assert planned.record.steps[1].name.startswith("jsonl_reader+FastTextLangId+word_count+")
