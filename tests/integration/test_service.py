"""The service end to end: a real nats-server, real Ray, the planner, coordinator and two workers
as separate processes (`EmbeddedService`), driven through `ServiceExecutor`, the client and the
CLI. Results are compared with `LocalExecutor`'s, document for document."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.js.errors import KeyNotFoundError

from gristmill import Pipeline
from gristmill.bus import JobSpec, TaskManifest
from gristmill.bus.client import kv_keys
from gristmill.bus.jobs import JobRecord, consumer_name, done_key, job_key
from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import event_subject, task_subject
from gristmill.cli import main
from gristmill.client import JobRejected, ServiceClient, new_request_id
from gristmill.embedded import EmbeddedService
from gristmill.executors.local import LocalExecutor
from gristmill.executors.service import JobFailed, ServiceExecutor
from gristmill.stages.text.io import JsonlReader, JsonlWriter
from gristmill.store import TaskStore

from service_helpers import (
    ROOT,
    client_call,
    doc_ids,
    fifos,
    finished,
    internal_call,
    read_fifo,
    run_in_thread,
    service_under,
    until,
    written,
)
from service_stages import FanOutRows, GateOn, PoisonOn, RecordCalls, SleepEach, StallOnce

pytestmark = pytest.mark.integration

QUALITY = ROOT / "examples" / "pipelines" / "quality.yaml"
DATA = ROOT / "examples" / "data"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[EmbeddedService]:
    with service_under(base, workers=2, slots=2) as running:
        yield running


def quality(output: Path, inputs: Path = DATA) -> Pipeline:
    spec = yaml.safe_load(QUALITY.read_text())
    spec["stages"][0]["params"] = {"file_paths": str(inputs)}
    spec["stages"][-1]["params"] = {"path": str(output)}
    return Pipeline.from_spec(spec)


def test_the_quality_pipeline_on_the_service_writes_what_local_writes(
    service: EmbeddedService, base: Path
) -> None:
    local = quality(base / "local").run(LocalExecutor())
    executor = ServiceExecutor(service.url)
    remote = quality(base / "remote").run(executor)

    assert [t.task_id for t in remote] == [t.task_id for t in local]
    assert written(base / "remote") == written(base / "local")
    ids = doc_ids(base / "remote")
    assert len(ids) == len(set(ids)) == 340
    assert executor.state is not None
    assert executor.state.state == "completed"
    assert (executor.state.items_in, executor.state.items_out) == (449, 340)
    assert executor.state.items_dropped == 109


def test_the_cli_submits_a_yaml_spec_and_waits_for_its_summary(
    service: EmbeddedService, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    quality(base / "local-cli").run(LocalExecutor())
    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    args = ["submit", str(QUALITY), "--input", str(DATA), "--output", str(base / "cli"), "--wait"]

    assert main(args) == 0

    out = capsys.readouterr().out
    assert re.search(r"job j[0-9a-f]{15} completed in [0-9.]+ s: 449 documents in, 340 out, 109 dropped; 0 failed tasks", out)  # fmt: skip
    step = "1 jsonl_reader+word_count+symbol_to_wor..."
    assert (
        f"step                                        dropped by            documents\n"
        f"{step}  word_count                   57\n"
        f"{step}  repeated_lines               14\n"
        f"{step}  urls_ratio                   11\n"
        f"{step}  punctuation                   9\n"
        f"{step}  repeating_top_2grams          8\n"
        f"{step}  mean_word_length              5\n"
        f"{step}  symbol_to_word                3\n"
        f"{step}  alpha_numeric                 2\n"
        f"output: {base / 'cli'}\n"
    ) in out  # the drops per filter add up to the 109 dropped
    assert written(base / "cli") == written(base / "local-cli")
    assert main(["status"]) == 0
    assert re.search(r"j[0-9a-f]{15}  quality  completed  tasks 3/3 done, 0 failed", capsys.readouterr().out)  # fmt: skip


@pytest.mark.chaos
def test_a_worker_killed_mid_task_loses_and_duplicates_nothing(
    service: EmbeddedService, base: Path
) -> None:
    fifo_dir = fifos(base / "stall", "started", "never")
    expected = Pipeline(
        "plain", [JsonlReader(file_paths=str(DATA)), JsonlWriter(path=str(base / "plain"))]
    ).run()
    pipeline = Pipeline(
        "stall",
        [
            JsonlReader(file_paths=str(DATA)),
            StallOnce("doc-00200", str(fifo_dir)),
            JsonlWriter(path=str(base / "stalled")),
        ],
    )
    executor = ServiceExecutor(service.url, config={"ack_wait_s": 2.0})
    thread = run_in_thread(pipeline, executor)

    worker = read_fifo(fifo_dir / "started")  # the stage is now blocked inside that worker
    service.kill(worker)
    try:
        outputs = finished(thread)
    finally:
        service.restart(worker)

    assert [t.task_id for t in outputs] == [t.task_id for t in expected]
    assert written(base / "stalled") == written(base / "plain")
    ids = doc_ids(base / "stalled")
    assert len(ids) == len(set(ids)) == 449
    done = client_call(service, lambda c: c.done_events(executor.job))
    store = client_call(service, lambda c: c.store())
    [stalled] = [
        d
        for d in done
        if "doc-00200" in Path(store.get(d.results[0].outputs[0], "default").data[0]).read_text()
    ]
    assert stalled.attempt == 2  # the killed attempt counts
    assert all(d.attempt in (1, 2) for d in done)  # a task the killed worker also held: 2


def test_a_task_delivered_twice_is_written_once_and_counted_once(
    service: EmbeddedService, base: Path
) -> None:
    fifo_dir = fifos(base / "gate", "started", "release")
    calls = base / "calls.log"
    pipeline = Pipeline(
        "twice",
        [
            JsonlReader(file_paths=str(DATA)),
            RecordCalls(str(calls)),
            GateOn("doc-00300", str(fifo_dir)),
            JsonlWriter(path=str(base / "twice")),
        ],
    )
    executor = ServiceExecutor(service.url)
    thread = run_in_thread(pipeline, executor)
    read_fifo(fifo_dir / "started")  # one task is held open: the job cannot finish meanwhile
    job = until(lambda: executor.job, "the job id")
    team, layout = "default", TeamLayout("default")

    async def finished_task(client: ServiceClient) -> tuple[str, TaskManifest] | None:
        started = await client.started(job)
        done = await client.js.key_value(layout.bucket("done"))
        jobs = await client.js.key_value(layout.bucket("jobs"))
        record = JobRecord.from_json((await jobs.get(job_key(job))).value)
        store = await client.store()
        assert record.plan is not None
        plan = store.get_bytes(record.plan, team).split(b"\n")
        planned = {m.key: m for m in map(TaskManifest.from_json, plan)}
        for task_id in started.initial:
            try:
                await done.get(done_key(job, started.first_step, task_id))
            except KeyNotFoundError:
                continue
            return task_id, planned[task_id]
        return None

    task_id, manifest = until(lambda: internal_call(service, finished_task), "a finished task")

    async def deliver_again(client: ServiceClient) -> None:
        await client.js.publish(
            task_subject(team, job, "1"), manifest.to_json(), headers={"Nats-Msg-Id": "again"}
        )

    internal_call(service, deliver_again)

    async def settled(client: ServiceClient) -> bool:
        info = await client.js.consumer_info(layout.tasks_stream, consumer_name(job, 1))
        return bool(info.num_pending == 0 and info.num_ack_pending == 1)  # only the gated one

    until(lambda: internal_call(service, settled), "the repeated manifest to be consumed")
    with (fifo_dir / "release").open("w") as release:
        release.write("go")
    outputs = finished(thread)

    processed = calls.read_text().splitlines()  # one line per batch the stage processed
    assert len(processed) == len(set(processed)) == 3  # the repeat did not run the stage
    assert len(outputs) == 3
    ids = doc_ids(base / "twice")
    assert len(ids) == len(set(ids)) == 449

    async def announcements(client: ServiceClient) -> int:
        subject = event_subject(team, job, "task_done")
        count = 0
        async for msg in _replay(client, subject):
            count += json.loads(msg.data)["key"] == task_id
        return count

    assert client_call(service, announcements) == 1
    assert executor.state is not None
    assert (executor.state.tasks_published, executor.state.tasks_done) == (3, 3)


def _replay(client: ServiceClient, subject: str) -> Any:
    from gristmill.bus.client import replay

    return replay(client.js, subject)


def poisoned_corpus(directory: Path) -> Path:
    directory.mkdir()
    for part in range(3):
        lines = [
            {"id": f"p{part}-{n}", "text": "POISON" if (part, n) == (1, 2) else f"doc {part} {n}"}
            for n in range(4)
        ]
        (directory / f"part-{part}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return directory


def test_a_poison_task_is_dead_lettered_after_max_deliver_and_the_rest_arrives(
    service: EmbeddedService, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    corpus = poisoned_corpus(base / "poisoned")
    pipeline = Pipeline(
        "poison",
        [
            JsonlReader(file_paths=str(corpus)),
            PoisonOn("POISON"),
            JsonlWriter(path=str(base / "poison-out")),
        ],
    )
    config = {"max_deliver": 2, "retry_backoff_s": 0.05, "allow_failures": True}
    executor = ServiceExecutor(service.url, config=config)

    outputs = pipeline.run(executor)

    assert executor.state is not None
    assert executor.state.state == "completed_with_failures"
    assert (executor.state.tasks_done, executor.state.tasks_failed) == (2, 1)
    assert len(outputs) == 2
    assert sorted(doc_ids(base / "poison-out")) == [f"p{p}-{n}" for p in (0, 2) for n in range(4)]
    [letter] = client_call(service, lambda c: c.dead_letters(executor.job))
    assert letter.failure.attempts == 2
    assert re.fullmatch(
        r"StageError: stage 'PoisonOn' failed in process\(\) on task (\w{32}): "
        r"ValueError: poisoned batch \1",
        letter.failure.error,
    )
    assert (  # the stage's own source line: shipped code keeps its lines in tracebacks
        'raise ValueError(f"poisoned batch {task.task_id}")\nValueError: poisoned batch '
        in letter.failure.traceback
    )
    assert letter.manifest.step == 1

    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    job, task = executor.job, letter.failure.task_id
    assert main(["dlq", "list", job]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(
        f"{job}  step 1  task {task}  2 attempts  StageError: stage 'PoisonOn'"
    )
    assert main(["dlq", "show", job, "--task", task]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"job {job} step 1 (jsonl_reader+PoisonOn+jsonl_writer) task {task}\n")
    assert "attempts: 2, last on worker cpu-" in shown
    assert "ValueError: poisoned batch " in shown
    assert main(["dlq", "retry", job]) == 0
    assert capsys.readouterr().out == f"task {task} of job {job} published again\n"
    # Still poisoned: two more attempts, then a second dead letter (not a duplicate of the first).
    until(lambda: len(client_call(service, lambda c: c.dead_letters(job))) == 2, "a 2nd letter")

    strict = ServiceExecutor(service.url, config={"max_deliver": 1})
    with pytest.raises(JobFailed, match=r"job j[0-9a-f]{15}: 1 task\(s\) failed; first: step 1 task [0-9a-f]{32} after 1 attempts: StageError"):  # fmt: skip
        Pipeline("poison-2", [JsonlReader(file_paths=str(corpus)), PoisonOn("POISON")]).run(strict)


def _submission(**changes: Any) -> JobSpec:
    pipeline = yaml.safe_load(QUALITY.read_text())
    fields: dict[str, Any] = {
        "team": "default",
        "request_id": new_request_id(),
        "pipeline": pipeline,
        "inputs": [str(DATA)],
        "output": "OUTPUT",
    }
    fields.update(changes)
    return JobSpec(**fields)


def test_invalid_submissions_are_rejected_and_publish_nothing(
    service: EmbeddedService, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    layout = TeamLayout("default")
    unknown = yaml.safe_load(QUALITY.read_text())
    unknown["stages"][1] = {"stage": "NoSuchFilter"}
    bad_type = yaml.safe_load(QUALITY.read_text())
    bad_type["stages"][0]["params"] = {"files_per_partition": "many"}
    cases = {
        "unknown stage": (
            _submission(pipeline=unknown, output=str(base / "x")),
            "unknown stage 'NoSuchFilter' (registered stages: ",
        ),
        "bad param type": (
            _submission(pipeline=bad_type, output=str(base / "x")),
            "stage #1 'JsonlReader': bad params: files_per_partition: Input should be a valid integer",
        ),
        "missing input": (
            _submission(inputs=[str(base / "nowhere")], output=str(base / "x")),
            f"{base / 'nowhere'}",
        ),
        "output outside the root": (
            _submission(output="/etc/gristmill-out"),
            f"stage #10 'JsonlWriter': path '/etc/gristmill-out' is outside the output root {base}",
        ),
    }

    async def counts(client: ServiceClient) -> tuple[int, int]:
        info = await client.js.stream_info(layout.tasks_stream)
        return info.state.last_seq, len(await kv_keys(client.js, layout.bucket("jobs"), ">"))

    before = internal_call(service, counts)
    for name, (spec, message) in cases.items():
        with pytest.raises(JobRejected, match=re.escape(message)):
            client_call(service, lambda c, s=spec: c.submit(s))

        async def no_record(client: ServiceClient, s: JobSpec = spec) -> bool:
            from gristmill.bus.jobs import job_id_for

            jobs = await client.js.key_value(layout.bucket("jobs"))
            try:
                await jobs.get(job_key(job_id_for("default", s.request_id)))
            except KeyNotFoundError:
                return True
            return False

        assert internal_call(service, no_record), name
    assert internal_call(service, counts) == before

    bad_yaml = base / "bad.yaml"
    bad_yaml.write_text("name: q\nstages:\n  - stage: JsonlReader\n   params: {}\n")
    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    assert main(["submit", str(bad_yaml), "--output", str(base / "y")]) == 2
    assert f"pipeline spec '{bad_yaml}': line 4, column 4: invalid YAML" in capsys.readouterr().err
    assert internal_call(service, counts) == before


@pytest.mark.chaos
def test_a_restarted_coordinator_rebuilds_every_job_from_the_streams(
    service: EmbeddedService, base: Path
) -> None:
    executor = ServiceExecutor(service.url)
    quality(base / "before-restart").run(executor)
    before = client_call(service, lambda c: c.status())

    service.kill("coordinator")
    service.restart("coordinator")

    after = client_call(service, lambda c: c.status())
    assert [s.model_dump() for s in after] == [s.model_dump() for s in before]
    assert quality(base / "after-restart").run(ServiceExecutor(service.url))
    assert written(base / "after-restart") == written(base / "before-restart")


@pytest.mark.chaos
def test_a_job_survives_its_coordinator_being_killed_midway(
    service: EmbeddedService, base: Path
) -> None:
    fifo_dir = fifos(base / "gate-coordinator", "started", "release")
    pipeline = Pipeline(
        "midway",
        [
            JsonlReader(file_paths=str(DATA)),
            GateOn("doc-00100", str(fifo_dir)),
            JsonlWriter(path=str(base / "midway")),
        ],
    )
    executor = ServiceExecutor(service.url)
    thread = run_in_thread(pipeline, executor)
    read_fifo(fifo_dir / "started")  # one task is running, held open

    service.kill("coordinator")
    with (fifo_dir / "release").open("w") as release:
        release.write("go")  # it finishes while no coordinator runs
    service.restart("coordinator")
    outputs = finished(thread)

    assert len(outputs) == 3
    ids = doc_ids(base / "midway")
    assert len(ids) == len(set(ids)) == 449
    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_done) == ("completed", 3)


def test_resubmitting_the_same_request_makes_no_second_job(service: EmbeddedService) -> None:
    layout = TeamLayout("default")
    spec = _submission(output=str(service.state_dir.parent / "resubmitted"))

    async def submit_twice(client: ServiceClient) -> tuple[str, str, int, int]:
        first = await client.submit(spec)
        await client.wait(first)
        before = (await client.js.stream_info(layout.tasks_stream)).state.last_seq
        second = await client.submit(spec)  # a client retrying after a lost reply
        after = (await client.js.stream_info(layout.tasks_stream)).state.last_seq
        return first, second, before, after

    first, second, before, after = internal_call(service, submit_twice)
    assert first == second
    assert after == before  # every manifest of the repeat was a duplicate
    [state] = client_call(service, lambda c: c.status(first))
    assert (state.state, state.tasks_published, state.tasks_done) == ("completed", 3, 3)


def test_a_store_root_the_service_reports_is_where_tasks_are(service: EmbeddedService) -> None:
    store = client_call(service, lambda c: c.store())
    assert isinstance(store, TaskStore)
    assert store.root == str(service.state_dir / "store")


def test_groups_made_before_their_step_was_measured_run_task_by_task_once_it_is(
    service: EmbeddedService,
) -> None:
    # 80 one-row tasks leave the fan-out in 10 groups of 8 (their step unmeasured); a group of
    # 8 x 0.15 s is past a second as one run, so once a worker has measured the step, each
    # group it takes runs task by task, each task in a slot of its own.
    executor = ServiceExecutor(service.url)
    outputs = Pipeline("unbundled", [FanOutRows(80), SleepEach(0.15)]).run(executor)

    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_done) == ("completed", 81)
    rows = sorted(n for out in outputs for n in out.to_pyarrow().column("n").to_pylist())
    assert rows == list(range(80))  # every task once

    def slot_runs() -> list[int] | None:
        # A run's slot span is under its first task's attempt, which is stored once settled:
        # the job can be complete a moment before the last attempts' spans are in the store.
        spans = client_call(service, lambda c: c.trace(executor.job))["spans"]
        step_1 = {
            s["span_id"]
            for s in spans
            if s["attributes"].get("gm.kind") == "attempt" and s["attributes"]["gm.step"] == 1
        }
        runs = [
            s["attributes"]["gm.tasks"]
            for s in spans
            if s["name"] == "slot" and s["parent_span_id"] in step_1
        ]
        return runs if sum(runs) >= 80 else None

    runs = until(slot_runs, "a slot span for every task of step 1", timeout_s=30.0)
    assert sum(runs) == 80  # each task's run held a slot once
    assert set(runs) == {1, 8}
    assert runs.count(8) <= 4  # whole only where a worker had not measured the step: 4 slots
