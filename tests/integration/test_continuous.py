"""Continuous jobs on the real service: files dropped into the input over time are each
processed once, whatever is repeated or restarted, dedup reaches across files and jobs, and a
stopped job leaves a consistent dataset and lineage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from gristmill.bus import ContinuousOptions, JobSpec, JobState
from gristmill.client import JobRejected
from gristmill.pipeline import Pipeline
from gristmill.pipeline.spec import load_spec, stage_from_spec
from gristmill.stages.text.io import JsonlReader

from service_helpers import ROOT, client_call, service_under, until

pytestmark = pytest.mark.integration

DATA = ROOT / "examples" / "data"
PIPELINE = ROOT / "examples" / "pipelines" / "continuous.yaml"


def _spec(request_id: str, inbox: Path, out: Path, index: str, poll_s: float = 0.2) -> JobSpec:
    pipeline = load_spec(str(PIPELINE)).to_dict()
    for stage in pipeline["stages"]:
        if stage["stage"] == "ExactDuplicateRemoval":
            stage["params"]["index"] = index
        if stage["stage"] == "JsonlWriter":
            stage.setdefault("params", {})["drops_path"] = str(out / "drops")
    return JobSpec(
        team="default",
        request_id=request_id,
        pipeline=pipeline,
        inputs=[str(inbox)],
        output=str(out),
        continuous=ContinuousOptions(poll_s=poll_s),
    )


def _state(service: Any, job: str) -> JobState:
    [state] = client_call(service, lambda c: c.status(job))
    return state


def _done(service: Any, job: str, files: int) -> JobState:
    return until(
        lambda: (s := _state(service, job)).files is not None and s.files.done >= files and s,
        f"{files} files of job {job} done",
        timeout_s=90,
    )


def _drop(source: Path, inbox: Path, name: str) -> Path:
    """Put a file into the input the safe way: a hidden name, then renamed into place."""
    hidden = inbox / f".{name}.tmp"
    shutil.copy(source, hidden)
    os.replace(hidden, inbox / name)
    return inbox / name


def _lineage(out: Path) -> dict[str, dict[str, Any]]:
    return {
        r["input"]: r
        for r in (json.loads(p.read_text()) for p in sorted((out / "_lineage").glob("*.json")))
    }


def _output_ids(out: Path) -> list[str]:
    return [
        json.loads(line)["id"]
        for path in sorted(out.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_files_arriving_over_time_are_each_processed_once_through_repeats_and_restarts(
    tmp_path: Path,
) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    with service_under(tmp_path) as service:
        job = client_call(service, lambda c: c.submit(_spec("c1", inbox, out, "t-history")))
        first = _drop(DATA / "part-000.jsonl", inbox, "a.jsonl")
        state = _done(service, job, 1)
        assert (state.files.seen, state.files.pending, state.files.failed) == (1, 0, 0)

        # A second copy of the first file: every document it keeps is a duplicate.
        copy = _drop(DATA / "part-000.jsonl", inbox, "b.jsonl")
        client_call(service, lambda c: c.notify(job, [str(copy), str(copy)]))
        client_call(service, lambda c: c.notify(job, [str(first)]))  # seen before: ignored
        _done(service, job, 2)

        # The planner restarts mid-stream; a file arrives while it is down.
        before = service.restarts("planner")
        service.kill("planner")
        _drop(DATA / "part-001.jsonl", inbox, "c.jsonl")
        service.wait_running("planner", after_restarts=before)
        client_call(service, lambda c: c.notify(job, [str(copy)]))  # a repeat after restart
        state = _done(service, job, 3)
        assert state.files.seen == 3

        files = client_call(service, lambda c: c.stop(job))
        assert files == 3
        final = client_call(service, lambda c: c.wait(job, timeout_s=60))
        assert final.state == "completed"
        assert final.files is not None
        assert (final.files.seen, final.files.done, final.files.input_closed) == (3, 3, True)
        assert final.items_in == final.items_out + final.items_dropped == 150 + 150 + 150

        lineage = _lineage(out)
        assert sorted(lineage) == [str(first), str(copy), str(inbox / "c.jsonl")]
        assert sum(r["documents"]["in"] for r in lineage.values()) == final.items_in
        assert sum(r["documents"]["out"] for r in lineage.values()) == final.items_out
        listed = sorted(p for r in lineage.values() for p in r["outputs"])
        assert listed == sorted(str(p) for p in out.glob("*.jsonl"))  # nothing else, nothing less
        assert lineage[str(copy)]["documents"]["out"] == 0  # all of it seen before
        ids = _output_ids(out)
        assert len(ids) == len(set(ids)) == final.items_out

        # Why was a document of the copy dropped? It names the earlier one, and its file.
        [output] = lineage[str(first)]["outputs"]
        kept = json.loads(Path(output).read_text().splitlines()[0])["id"]
        fate = client_call(service, lambda c: c.why(job, kept))
        assert fate["fate"] == "dropped"
        assert fate["stage"] == "exact_duplicate_removal"
        assert fate["reason"] == f"exact duplicate of {kept}"
        assert (fate["duplicate_of"], fate["duplicate_source"]) == (kept, str(first))
        drops = [
            json.loads(line)
            for path in (out / "drops").glob("*.jsonl")
            for line in path.read_text().splitlines()
        ]
        dropped = sum(r["documents"]["dropped"] for r in lineage.values())
        assert len(drops) == dropped == final.items_dropped
        assert sorted(p for r in lineage.values() for p in r["drops"]) == sorted(
            str(p) for p in (out / "drops").glob("*.jsonl")
        )

        # A resubmission of the stopped job is the same job: nothing is taken again.
        again = client_call(service, lambda c: c.submit(_spec("c1", inbox, out, "t-history")))
        assert again == job


def test_a_batch_backfill_and_a_continuous_job_dedup_against_each_other(tmp_path: Path) -> None:
    inbox, out, backfill = tmp_path / "in", tmp_path / "out", tmp_path / "backfill"
    inbox.mkdir()
    with service_under(tmp_path) as service:
        batch = _spec("bf", DATA / "part-002.jsonl", backfill, "t-shared")
        batch = batch.model_copy(update={"continuous": None})
        job = client_call(service, lambda c: c.submit(batch))
        done = client_call(service, lambda c: c.wait(job, timeout_s=90))
        assert done.state == "completed"
        assert done.items_out > 0

        live = client_call(service, lambda c: c.submit(_spec("live", inbox, out, "t-shared")))
        _drop(DATA / "part-002.jsonl", inbox, "again.jsonl")
        state = _done(service, live, 1)
        assert state.items_out == 0
        within = done.steps[1].dropped_by.get("exact_duplicate_removal", 0)  # its own repeats
        assert state.steps[1].dropped_by["exact_duplicate_removal"] == done.items_out + within
        client_call(service, lambda c: c.stop(live))


FUZZY = ROOT / "examples" / "pipelines" / "fuzzy_continuous.yaml"


def test_a_continuous_job_drops_near_duplicates_of_an_earlier_file(tmp_path: Path) -> None:
    inbox, out, local = tmp_path / "in", tmp_path / "out", tmp_path / "local"
    inbox.mkdir()
    # A light edit of every document of part-000, under new ids: near, not exact, duplicates.
    rows = [json.loads(line) for line in (DATA / "part-000.jsonl").read_text().splitlines()]
    edited = [{"id": f"near-{r['id']}", "text": r["text"].replace(" the ", " a ", 1) + " Copy."} for r in rows]  # fmt: skip
    near = tmp_path / "near.jsonl"
    near.write_text("".join(json.dumps(r) + "\n" for r in edited))
    pipeline = load_spec(str(FUZZY))
    # What the same stages keep of each file on LocalExecutor, with an index of their own.
    expected, fuzzy_local = [], 0
    for path in (DATA / "part-000.jsonl", near):
        stages = [JsonlReader(str(path))]
        stages += [stage_from_spec(s, n) for n, s in enumerate(pipeline.stages[1:-1], 2)]
        for stage in stages:
            if getattr(stage, "index", None):
                stage.index_root, stage.index_owner = str(local), f"local-{path.name}"
        outputs = Pipeline("local", stages).run()
        expected.append(sum(t.num_items for t in outputs))
        fuzzy_local += sum(len(g["ids"]) for t in outputs for g in t._metadata.get("drops", []) if g["stage"] == "fuzzy_duplicate_removal")  # fmt: skip
    assert expected[0] > 100
    assert expected[1] < 5  # almost every edited document is caught

    raw = pipeline.to_dict()
    raw["stages"][-1].setdefault("params", {})["drops_path"] = str(out / "drops")
    spec = JobSpec(team="default", request_id="fz", pipeline=raw, inputs=[str(inbox)], output=str(out), continuous=ContinuousOptions(poll_s=0.2))  # fmt: skip
    with service_under(tmp_path) as service:
        job = client_call(service, lambda c: c.submit(spec))
        first = _drop(DATA / "part-000.jsonl", inbox, "a.jsonl")
        assert _done(service, job, 1).items_out == expected[0]
        _drop(near, inbox, "b.jsonl")
        state = _done(service, job, 2)
        assert state.items_out == expected[0] + expected[1]
        assert state.items_in == state.items_out + state.items_dropped == 300
        fuzzy = sum(step.dropped_by.get("fuzzy_duplicate_removal", 0) for step in state.steps)
        assert fuzzy == fuzzy_local > expected[0] - 10

        # A document of a.jsonl that was kept, whose edited copy was not (nor an exact copy).
        written = set(_output_ids(out))
        texts = {r["id"]: r["text"] for r in rows}
        kept = next(i for i in sorted(written) if " the " in texts.get(i, "") and f"near-{i}" not in written)  # fmt: skip
        fate = client_call(service, lambda c: c.why(job, f"near-{kept}"))
        assert fate["fate"] == "dropped"
        assert fate["stage"] == "fuzzy_duplicate_removal"
        assert fate["reason"] == f"fuzzy duplicate of {kept}"
        assert (fate["duplicate_of"], fate["duplicate_source"]) == (kept, str(first))
        client_call(service, lambda c: c.stop(job))


def test_hidden_and_changed_files_are_never_taken_again(tmp_path: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    with service_under(tmp_path) as service:
        job = client_call(service, lambda c: c.submit(_spec("h", inbox, out, "t-hidden")))
        (inbox / ".partial.jsonl").write_text((DATA / "part-001.jsonl").read_text()[:1000])
        (inbox / "_staging.jsonl").write_text("not json\n")
        taken = _drop(DATA / "part-001.jsonl", inbox, "whole.jsonl")
        _done(service, job, 1)
        with taken.open("a") as handle:  # changed after it was processed
            handle.write('{"id": "late", "text": "appended"}\n')
        state = until(
            lambda: (s := _state(service, job)).files.changed and s, "the change reported"
        )
        assert state.files.changed == [str(taken)]
        assert state.files.seen == 1  # the hidden files and the changed one: not taken
        problems = ", ".join(state.files.changed)
        assert problems == str(taken)
        client_call(service, lambda c: c.stop(job))
        final = client_call(service, lambda c: c.wait(job, timeout_s=60))
        assert (final.files.seen, final.files.done) == (1, 1)


def test_a_continuous_job_is_refused_without_a_reader_or_an_input(tmp_path: Path) -> None:
    with service_under(tmp_path) as service:
        spec = _spec("bad", tmp_path, tmp_path / "out", "t-bad").model_copy(update={"inputs": []})
        with pytest.raises(JobRejected, match="a continuous job needs --input"):
            client_call(service, lambda c: c.submit(spec))
        batch = _spec("b2", DATA / "part-000.jsonl", tmp_path / "o2", "t-bad")
        batch = batch.model_copy(update={"continuous": None, "request_id": "b2"})
        job = client_call(service, lambda c: c.submit(batch))
        with pytest.raises(Exception, match=f"job {job} is not continuous"):
            client_call(service, lambda c: c.stop(job))


def test_a_coordinator_restarts_from_its_snapshot_and_replays_only_what_followed(
    tmp_path: Path,
) -> None:
    from services.coordinator.keeping import snapshot_path

    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    with service_under(tmp_path) as service:
        job = client_call(service, lambda c: c.submit(_spec("snap", inbox, out, "t-snap")))
        _drop(DATA / "part-000.jsonl", inbox, "a.jsonl")
        before = _done(service, job, 1)
        store = client_call(service, lambda c: c.store())
        snapshot = Path(snapshot_path(store, "default"))
        until(snapshot.exists, "the coordinator's snapshot")
        service.kill("coordinator")
        service.restart("coordinator")
        after = _state(service, job)
        assert after.model_copy(update={"files": None}) == before.model_copy(update={"files": None})
        assert (after.files.seen, after.files.done) == (1, 1)
        _drop(DATA / "part-001.jsonl", inbox, "b.jsonl")
        state = _done(service, job, 2)
        assert state.items_in == 300
        client_call(service, lambda c: c.stop(job))
        final = client_call(service, lambda c: c.wait(job, timeout_s=60))
        assert (final.state, final.files.done) == ("completed", 2)
        assert sorted(_lineage(out)) == [str(inbox / "a.jsonl"), str(inbox / "b.jsonl")]
