"""The defects a reading of the service's code suspected, each pinned on a real nats-server and
real Ray: two workers of one slot each, as separate processes (`EmbeddedService`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline
from gristmill.bus import DataRef, TaskEntry, TaskManifest
from gristmill.bus.jobs import assignment_key, consumer_name, worker_key
from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import event_subject, task_subject
from gristmill.cli import main
from gristmill.client import ServiceClient
from gristmill.embedded import EmbeddedService
from gristmill.errors import GristmillError
from gristmill.executors.local import LocalExecutor
from gristmill.executors.service import JobFailed, ServiceExecutor
from gristmill.stages.text.io import JsonlReader, JsonlWriter

from service_helpers import (
    client_call,
    doc_ids,
    fifos,
    finished,
    internal_call,
    read_fifo,
    run_in_thread,
    service_under,
    until,
)
from service_stages import (
    AddOneToN,
    FailWhile,
    FanOutRows,
    GateOn,
    HangOn,
    RecordCalls,
    SameId,
)

pytestmark = pytest.mark.integration

LAYOUT = TeamLayout("default")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("defects")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[EmbeddedService]:
    with service_under(base, workers=2, slots=1) as running:
        yield running


def corpus(directory: Path, files: int, docs: int, marked: tuple[int, int] | None = None) -> Path:
    """`files` JSONL files of `docs` documents `<dir name><file>-<doc>`; the document `marked`
    (file, doc) holds the text MARKED."""
    directory.mkdir()
    for part in range(files):
        lines = [
            {
                "id": f"{directory.name}{part}-{n}",
                "text": "MARKED" if (part, n) == marked else f"doc {n}",
            }
            for n in range(docs)
        ]
        (directory / f"part-{part}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return directory


def gated(base: Path, name: str) -> tuple[Pipeline, Path]:
    """A three-task job whose task holding document `<name>0-0` waits at a gate."""
    gate = fifos(base / f"{name}-gate", "started", "release")
    data = corpus(base / name, 3, 4)
    stages = [JsonlReader(file_paths=str(data)), GateOn(f"{name}0-0", str(gate)), JsonlWriter(path=str(base / f"{name}-out"))]  # fmt: skip
    return Pipeline(name, stages), gate


def open_gate(gate: Path) -> None:
    with (gate / "release").open("w") as release:
        release.write("go")


# -- 1. a held manifest outwaiting its ack wait --------------------------------------------------


def test_a_worker_whose_slots_are_busy_takes_nothing_so_nothing_it_holds_expires(
    service: EmbeddedService, base: Path
) -> None:
    job_a, gate = gated(base, "hold")
    thread_a = run_in_thread(job_a, ServiceExecutor(service.url))
    busy = read_fifo(gate / "started")  # that worker's only slot is taken until the gate opens
    calls = base / "hold-calls.log"
    stages_b = [JsonlReader(file_paths=str(corpus(base / "holdb", 8, 5))), RecordCalls(str(calls)), JsonlWriter(path=str(base / "holdb-out"))]  # fmt: skip
    executor = ServiceExecutor(service.url, {"ack_wait_s": 1.0, "max_deliver": 1})

    Pipeline("hold-b", stages_b).run(executor)  # while the gate is shut

    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_failed) == ("completed", 0)
    processed = calls.read_text().splitlines()
    assert len(processed) == len(set(processed)) == 8  # every task ran exactly once
    done = client_call(service, lambda c: c.done_events(executor.job))
    assert {d.attempt for d in done} == {1}  # none outwaited its ack wait and came back
    assert busy not in {d.worker for d in done}  # the busy worker held none of them
    open_gate(gate)
    assert len(finished(thread_a)) == 3


# -- 10. a task that hangs -----------------------------------------------------------------------


def test_a_task_that_hangs_past_its_timeout_is_stopped_and_its_attempts_fail(
    service: EmbeddedService, base: Path
) -> None:
    fifo = base / "hang-never"
    fifo.parent.mkdir(exist_ok=True)
    import os

    os.mkfifo(fifo)
    data = corpus(base / "hang", 3, 4)
    stages = [JsonlReader(file_paths=str(data)), HangOn("hang1-2", str(fifo)), JsonlWriter(path=str(base / "hang-out"))]  # fmt: skip
    config = {"max_deliver": 2, "retry_backoff_s": 0.05, "allow_failures": True}
    executor = ServiceExecutor(service.url, config)

    outputs = Pipeline("hang", stages).run(executor)

    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_done, executor.state.tasks_failed) == (
        "completed_with_failures",
        2,
        1,
    )
    assert len(outputs) == 2
    assert sorted(doc_ids(base / "hang-out")) == [f"hang{p}-{n}" for p in (0, 2) for n in range(4)]
    [letter] = client_call(service, lambda c: c.dead_letters(executor.job))
    assert letter.failure.attempts == 2
    assert re.fullmatch(
        r"TaskTimeout: task \w{32} of step 1 'jsonl_reader\+HangOn\+jsonl_writer' ran past "
        r"task_timeout_s=2; its actor was stopped",
        letter.failure.error,
    )


# -- 8 and 13. messages no worker may trust ----------------------------------------------------


def test_unreadable_and_forged_messages_are_dead_lettered_naming_why_and_the_job_ends(
    service: EmbeddedService, base: Path
) -> None:
    job_pipeline, gate = gated(base, "untrusted")
    config = {"max_deliver": 1, "allow_failures": True}
    executor = ServiceExecutor(service.url, config)
    thread = run_in_thread(job_pipeline, executor)
    read_fifo(gate / "started")
    job = until(lambda: executor.job, "the job id")
    store_root = str(service.state_dir / "store")
    forged = [
        ("etc", DataRef(uri="/etc/passwd", rows=1, bytes=10, sha256="0" * 64)),
        (
            "other",
            DataRef(uri=f"{store_root}/other/j1/0/x.tasks", rows=1, bytes=10, sha256="0" * 64),
        ),
        (
            "escape",
            DataRef(uri=f"{store_root}/default/../other/x.tasks", rows=1, bytes=1, sha256="0" * 64),
        ),
    ]

    async def publish_untrusted(client: ServiceClient) -> None:
        subject = task_subject("default", job, "1")
        newer = {"schema": 6, "job": job, "step": 1, "key": "ghost", "tasks": [{"task_id": "ghost"}]}  # fmt: skip
        await client.js.publish(subject, json.dumps(newer).encode(), headers={"Nats-Msg-Id": "v3"})
        event = {"schema": 6, "job": job, "step": 1, "results": [{"task_id": "ghost-event"}]}
        await client.js.publish(event_subject("default", job, "task_done"), json.dumps(event).encode())  # fmt: skip
        for name, ref in forged:
            entry = TaskEntry(task_id=f"forged-{name}", inputs=[ref])
            manifest = TaskManifest(
                job=job, step=1, step_name="x", key=entry.task_id, tasks=[entry]
            )
            await client.js.publish(subject, manifest.to_json())

    internal_call(service, publish_untrusted)
    # Forged tasks are known to nobody until they fail: let them, before the job may end.
    until(lambda: len(client_call(service, lambda c: c.dead_letters(job))) == 5, "5 dead letters")
    open_gate(gate)
    finished(thread)

    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_done, executor.state.tasks_failed) == (
        "completed_with_failures",
        3,
        5,
    )
    letters = {
        letter.failure.task_id: letter
        for letter in client_call(service, lambda c: c.dead_letters(job))
    }
    assert sorted(letters) == [
        "forged-escape",
        "forged-etc",
        "forged-other",
        "ghost",
        "ghost-event",
    ]
    version = "schema: Value error, message schema 6 is not the one this gristmill speaks (5); run the same gristmill version on every service"  # fmt: skip
    assert letters["ghost"].failure.error.startswith(f"unreadable manifest: invalid TaskManifest: {version}")  # fmt: skip
    assert letters["ghost"].manifest is None
    assert json.loads(letters["ghost"].raw)["schema"] == 6
    assert letters["ghost-event"].failure.error.startswith(
        f"unreadable event on gm.default.event.{job}.task_done: invalid TasksDone: {version}"
    )
    store_team = f"{service.state_dir / 'store'}/default"
    assert letters["forged-etc"].failure.error == (
        f"StoreError: reference '/etc/passwd' is outside team default's store {store_team}; refused"
    )
    for name in ("other", "escape"):
        assert letters[f"forged-{name}"].failure.error.startswith("StoreError: reference ")
        assert letters[f"forged-{name}"].failure.error.endswith(
            f"is outside team default's store {store_team}; refused"
        )


# -- 12. background loops that die of one bad value ---------------------------------------------


def test_a_bad_assignment_or_heartbeat_leaves_workers_and_coordinator_listening(
    service: EmbeddedService, base: Path
) -> None:
    async def write_garbage(client: ServiceClient) -> float:
        assignments = await client.js.key_value(LAYOUT.bucket("assignments"))
        await assignments.put(assignment_key("cpu-0"), b"not an assignment")
        workers = await client.js.key_value(LAYOUT.bucket("workers"))
        await workers.put(worker_key("bogus"), b"not a heartbeat")
        return time.time()

    written_at = internal_call(service, write_garbage)
    job_pipeline, gate = gated(base, "garbage")
    executor = ServiceExecutor(service.url)
    thread = run_in_thread(job_pipeline, executor)
    read_fifo(gate / "started")
    job = until(lambda: executor.job, "the job id")

    def both_pull_the_job() -> bool:
        status = client_call(service, lambda c: c.service_status())
        fresh = {w.worker: w for w in status.workers if w.at > written_at + 6}  # beats the
        # coordinator kept hearing after a dead worker would have timed out (5 s)
        return set(fresh) == {"cpu-0", "cpu-1"} and all(
            any(s.startswith(f"{job}/") for s in w.steps) for w in fresh.values()
        )

    until(both_pull_the_job, "both workers, still heard, to pull the job", timeout_s=60)
    open_gate(gate)
    assert len(finished(thread)) == 3


# -- 7. two parents, one task id ---------------------------------------------------------------


def test_a_task_id_made_from_two_parents_fails_the_job_naming_both(
    service: EmbeddedService, base: Path
) -> None:
    data = corpus(base / "same", 3, 2)
    stages = [JsonlReader(file_paths=str(data)), SameId(), JsonlWriter(path=str(base / "same-out"))]
    pipeline = Pipeline("same", stages)
    with pytest.raises(JobFailed) as caught:
        pipeline.run(ServiceExecutor(service.url, {"max_deliver": 1}), fuse=False)
    assert re.fullmatch(
        r"job j[0-9a-f]{15} failed: task id 'same' of step 3 'jsonl_writer' was made from two "
        r"parents, '\w{32}' and '\w{32}'; give each output its own id, or leave task_id empty "
        r"to have one derived",
        str(caught.value),
    )


# -- 5. a retried dead letter of a finished job -------------------------------------------------


def test_a_dead_letter_retried_after_its_job_ended_reopens_the_job_and_ends_it_again(
    service: EmbeddedService, base: Path
) -> None:
    flag = base / "failing-flag"
    flag.touch()
    data = corpus(base / "retry", 3, 4, marked=(1, 2))
    out = base / "retry-out"
    stages = [JsonlReader(file_paths=str(data)), FailWhile("MARKED", str(flag)), JsonlWriter(path=str(out))]  # fmt: skip
    executor = ServiceExecutor(service.url, {"max_deliver": 1, "allow_failures": True})
    Pipeline("retry", stages).run(executor)
    assert executor.state is not None
    assert executor.state.state == "completed_with_failures"
    job = executor.job
    assert job is not None

    async def consumers_gone(client: ServiceClient) -> bool:
        from nats.js.errors import NotFoundError

        for step in (1,):
            try:
                await client.js.consumer_info(LAYOUT.tasks_stream, consumer_name(job, step))
            except NotFoundError:
                continue
            return False
        return True

    until(lambda: internal_call(service, consumers_gone), "the ended job's consumers to go")
    flag.unlink()  # the stage now succeeds

    async def retry_and_wait(client: ServiceClient) -> Any:
        [letter] = await client.dead_letters(job)
        await client.retry(letter)
        return await client.wait(job, timeout_s=120, min_retries=1)

    state = client_call(service, retry_and_wait)

    assert (state.state, state.tasks_done, state.tasks_failed, state.retries) == (
        "completed",
        3,
        0,
        1,
    )
    assert sorted(doc_ids(out)) == sorted(f"retry{p}-{n}" for p in range(3) for n in range(4))
    until(lambda: internal_call(service, consumers_gone), "the consumers to go once it ended again")


# -- 9. long id lists ---------------------------------------------------------------------------


def test_a_fan_out_into_thousands_of_tasks_and_thousands_of_first_tasks_arrive_in_full(
    service: EmbeddedService,
) -> None:
    fanned = Pipeline("fan", [FanOutRows(2500), AddOneToN()])
    local = fanned.run(LocalExecutor())
    remote = fanned.run(ServiceExecutor(service.url))
    assert [t.task_id for t in remote] == [t.task_id for t in local]
    assert [t.to_pyarrow()["n"][0].as_py() for t in remote] == list(range(1, 2501))

    many = [DocumentBatch(task_id=f"first-{i}", data=pa.table({"n": [i]})) for i in range(1200)]
    executor = ServiceExecutor(service.url)
    outputs = Pipeline("many", [AddOneToN()]).run(executor, initial_tasks=many)
    assert [t.to_pyarrow()["n"][0].as_py() for t in outputs] == list(range(1, 1201))
    started = client_call(service, lambda c: c.started(executor.job))
    assert (started.initial, started.initial_parts) == ([], 2)


# -- 11. what an always-on service collects ------------------------------------------------------


def test_gc_archives_finished_jobs_leaving_a_summary_and_nothing_else(
    service: EmbeddedService, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = corpus(base / "gc", 2, 3)
    executor = ServiceExecutor(service.url)
    Pipeline("gc", [JsonlReader(file_paths=str(data)), JsonlWriter(path=str(base / "gc-out"))]).run(
        executor
    )
    job = executor.job
    assert job is not None
    assert (service.state_dir / "store" / "default" / job).is_dir()

    archived = client_call(service, lambda c: c.gc(older_than_s=0))

    assert job in archived
    assert not (service.state_dir / "store" / "default" / job).exists()
    assert sorted(doc_ids(base / "gc-out")) == sorted(f"gc{p}-{n}" for p in range(2) for n in range(3))  # fmt: skip

    async def leftovers(client: ServiceClient) -> dict[str, int]:
        counts = {}
        for stream, subject in (
            (LAYOUT.events_stream, f"gm.default.event.{job}.>"),
            (LAYOUT.bucket_stream("done"), f"$KV.{LAYOUT.bucket('done')}.{job}.>"),
        ):
            info = await client.js.stream_info(stream, subjects_filter=subject)
            counts[stream] = sum((info.state.subjects or {}).values())
        return counts

    assert set(internal_call(service, leftovers).values()) == {0}
    [summary] = client_call(service, lambda c: c.status(job))
    assert (summary.state, summary.archived_at is not None) == ("completed", True)
    with pytest.raises(
        GristmillError, match=rf"job {job} has no start event \(unknown, or archived\)"
    ):
        client_call(service, lambda c: c.outputs(job))
    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    assert main(["status"]) == 0
    listing = capsys.readouterr().out
    assert re.match(r"no jobs\n\(\d+ archived jobs not shown\)\nworkers: 2\n  cpu-0  cpu  [01]/1 slots busy  steps ", listing)  # fmt: skip
    assert main(["gc", "--older-than", "0"]) == 0
    assert capsys.readouterr().out == "archived 0 finished jobs\n"


# -- 2. outputs never silently short ------------------------------------------------------------


def test_outputs_whose_events_are_missing_are_an_error_not_a_shorter_list(
    service: EmbeddedService, base: Path
) -> None:
    data = corpus(base / "lost", 3, 2)
    executor = ServiceExecutor(service.url)
    pipeline = Pipeline("lost", [JsonlReader(file_paths=str(data)), JsonlWriter(path=str(base / "lost-out"))])  # fmt: skip
    assert len(pipeline.run(executor)) == 3
    job = executor.job
    assert job is not None

    async def lose_the_announcements(client: ServiceClient) -> None:
        await client.js.purge_stream(LAYOUT.events_stream, subject=event_subject("default", job, "task_done"))  # fmt: skip

    internal_call(service, lose_the_announcements)
    with pytest.raises(GristmillError) as caught:
        client_call(service, lambda c: c.outputs(job))
    assert re.fullmatch(
        rf"job {job}: task \w{{32}} of step 1 neither finished nor failed as far as the events "
        r"stream says; its outputs cannot be read",
        str(caught.value),
    )
