"""The bad-input catalogue (issue 9), on the real service: each bad input gets its exact error,
naming the file, line, stage or subject, or its exact accounting (documents in = documents out +
dropped + dead-lettered). One worker of two slots, as separate processes (`EmbeddedService`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline
from gristmill.bus.streams import TeamLayout
from gristmill.cli import main
from gristmill.client import JobRejected, ServiceClient
from gristmill.embedded import EmbeddedService
from gristmill.errors import GristmillError, TaskIdError
from gristmill.executors.local import LocalExecutor
from gristmill.executors.service import ServiceExecutor
from gristmill.stages import ProcessingStage
from gristmill.stages.text.filters import ScoreFilter, WordCountFilter
from gristmill.stages.text.io import JsonlReader, JsonlWriter
from gristmill.tasks import FileGroupTask, Task, content_task_id, derive_task_id

from service_helpers import client_call, doc_ids, internal_call, service_under, written

pytestmark = pytest.mark.integration

Stage = ProcessingStage[Any, Any]
TASKS_STREAM = TeamLayout("default").tasks_stream
NO_FILES = "no files ending in .jsonl, .json, .jsonl.gz, .json.gz, .jsonl.zst, .json.zst under"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[EmbeddedService]:
    with service_under(base, workers=1, slots=2, input_roots=(str(base),)) as running:
        yield running


def inputs(directory: Path, **files: bytes) -> Path:
    """A new directory holding `files` (name without .jsonl -> content)."""
    directory.mkdir()
    for name, content in files.items():
        (directory / f"{name}.jsonl").write_bytes(content)
    return directory


def lines(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def run_job(
    service: EmbeddedService, name: str, stages: list[Stage]
) -> tuple[ServiceExecutor, list[Task[Any]]]:
    """Run on the service with one attempt per task, failures allowed."""
    executor = ServiceExecutor(service.url, {"max_deliver": 1, "allow_failures": True})
    outputs = Pipeline(name, stages).run(executor)
    assert executor.state is not None
    return executor, outputs


def counts(executor: ServiceExecutor) -> tuple[str, int, int, int, int, int]:
    """The final state: (state, tasks done, tasks failed, documents in, out, dropped)."""
    s = executor.state
    assert s is not None
    return (s.state, s.tasks_done, s.tasks_failed, s.items_in, s.items_out, s.items_dropped)


def drop_records(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def dead_letters(service: EmbeddedService, executor: ServiceExecutor) -> dict[str, str]:
    """Each dead-lettered task's files (comma-joined) -> its error."""

    async def read(client: ServiceClient) -> dict[str, str]:
        store = await client.store()
        found = {}
        for letter in await client.dead_letters(executor.job):
            assert letter.manifest is not None
            [entry] = letter.manifest.tasks
            [ref] = entry.inputs
            group = store.get(ref, client.team)
            assert isinstance(group, FileGroupTask)
            found[",".join(group.data)] = letter.failure.error
        return found

    return dict(client_call(service, read))


def documents_in(*paths: Path) -> int:
    return sum(1 for p in paths for line in p.read_bytes().split(b"\n") if line.strip())


def published(service: EmbeddedService) -> int:
    """The tasks stream's last sequence number: unchanged means nothing was published."""

    async def last_seq(client: ServiceClient) -> int:
        return int((await client.js.stream_info(TASKS_STREAM)).state.last_seq)

    return int(internal_call(service, last_seq))


def reader_error(path: Path, line: int, problem: str) -> str:
    """A dead letter's error for bad input at `path:line`."""
    return f"DataFormatError: jsonl_reader: {path}:{line}: {problem}"


GOOD = lines({"id": "g1", "text": "good one"}, {"id": "g2", "text": "good two"})
# Each bad file: a good line, the bad line (line 2), a good line.
BAD_LINES = {
    "not-json": (
        b"{not json}",
        "malformed JSON: Expecting property name enclosed in double quotes (column 2)",
    ),
    "not-object": (b'["a", "list"]', "expected a JSON object, got array"),
    "not-utf8": (b'{"id": "u", "text": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at byte 25)"),
}


def bad_corpus(directory: Path) -> Path:
    files = {
        name: lines({"id": f"{name}-1", "text": "fine"})
        + bad
        + b"\n"
        + lines({"id": f"{name}-3", "text": "fine too"})
        for name, (bad, _) in BAD_LINES.items()
    }
    return inputs(directory, good=GOOD, **files)


# -- 1, 2. malformed lines, invalid UTF-8 ----------------------------------------------------


def test_a_malformed_line_dead_letters_its_task_naming_file_and_line_and_the_rest_arrives(
    service: EmbeddedService, base: Path
) -> None:
    data = bad_corpus(base / "malformed")
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data)),
        JsonlWriter(path=str(base / "malformed-out")),
    ]

    executor, outputs = run_job(service, "malformed", stages)

    assert counts(executor) == ("completed_with_failures", 1, 3, 2, 2, 0)
    assert doc_ids(base / "malformed-out") == ["g1", "g2"]
    assert len(outputs) == 1
    letters = dead_letters(service, executor)
    assert letters == {
        str(data / f"{name}.jsonl"): reader_error(data / f"{name}.jsonl", 2, problem)
        for name, (_, problem) in BAD_LINES.items()
    }
    dead = documents_in(*map(Path, letters))  # the documents of the files the letters name
    _, _, _, _, out, dropped = counts(executor)
    assert (out, dropped, dead) == (2, 0, 9)
    assert documents_in(*data.iterdir()) == out + dropped + dead  # = 11


def test_skipped_malformed_lines_are_dropped_with_records_and_the_counts_add_up(
    service: EmbeddedService, base: Path
) -> None:
    data = bad_corpus(base / "skipped")
    out, drops = base / "skipped-out", base / "skipped-drops"
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data), on_error="skip"),
        JsonlWriter(path=str(out), drops_path=str(drops)),
    ]

    executor, _ = run_job(service, "skipped", stages)

    assert counts(executor) == ("completed", 4, 0, 11, 8, 3)
    assert sorted(doc_ids(out)) == sorted(
        ["g1", "g2", *(f"{name}-{n}" for name in BAD_LINES for n in (1, 3))]
    )
    assert sorted(drop_records(drops), key=lambda r: r["id"]) == [
        {"id": f"{data / name}.jsonl:2", "stage": "jsonl_reader", "reason": problem}
        for name, (_, problem) in sorted(BAD_LINES.items())
    ]
    assert documents_in(*data.iterdir()) == 8 + 3  # in = out + dropped


# -- 3. empty files ----------------------------------------------------------------------------


def test_an_empty_file_and_a_file_of_blank_lines_give_no_documents_and_no_error(
    service: EmbeddedService, base: Path
) -> None:
    data = inputs(base / "empty", empty=b"", blank=b"\n  \n\r\n\n")

    def stages(out: str) -> list[Stage]:
        return [JsonlReader(file_paths=str(data)), JsonlWriter(path=out, drops_path=out + "-drops")]

    local = Pipeline("empty", stages(str(base / "empty-local"))).run(LocalExecutor())
    executor, outputs = run_job(service, "empty", stages(str(base / "empty-out")))

    assert counts(executor) == ("completed", 2, 0, 0, 0, 0)
    assert outputs == local == []  # a batch with no documents writes nothing, on both
    assert not (base / "empty-out").exists()
    assert not (base / "empty-out-drops").exists()


# -- 4. one 20 MB document ---------------------------------------------------------------------


def test_a_20_mb_single_line_document_arrives_whole(service: EmbeddedService, base: Path) -> None:
    text = "twenty megabytes " * 1_250_000
    assert len(text) > 20 * 2**20
    data = inputs(base / "big", big=lines({"id": "big", "text": text}))
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data)),
        JsonlWriter(path=str(base / "big-out")),
    ]

    executor, _ = run_job(service, "big", stages)

    assert counts(executor) == ("completed", 1, 0, 1, 1, 0)
    [(_, content)] = written(base / "big-out").items()
    [document] = [json.loads(line) for line in content.decode().splitlines()]
    assert document["id"] == "big"
    assert len(document["text"]) == len(text)
    assert document["text"] == text


# -- 5. no text, text that is not a string -----------------------------------------------------

NO_TEXT = lines(
    {"id": "t1", "text": "kept"},
    {"id": "t2"},
    {"id": "t3", "text": 7},
    {"id": "t4", "text": None},
    {"id": "t5", "text": ""},
)


def test_a_document_without_a_string_text_is_named_by_file_and_line_before_a_filter_reads_it(
    service: EmbeddedService, base: Path
) -> None:
    data = inputs(base / "notext", docs=NO_TEXT)
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data)),
        ScoreFilter(WordCountFilter(min_words=1)),
        JsonlWriter(path=str(base / "notext-out")),
    ]

    executor, outputs = run_job(service, "notext", stages)

    assert counts(executor) == ("completed_with_failures", 0, 1, 0, 0, 0)
    assert outputs == []
    assert dead_letters(service, executor) == {
        str(data / "docs.jsonl"): reader_error(data / "docs.jsonl", 2, "no 'text' field")
    }


def test_skipped_documents_without_a_string_text_and_filtered_ones_are_each_recorded(
    service: EmbeddedService, base: Path
) -> None:
    data = inputs(base / "notext-skip", docs=NO_TEXT)
    out, drops = base / "notext-skip-out", base / "notext-skip-drops"
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data), on_error="skip"),
        ScoreFilter(WordCountFilter(min_words=1)),
        JsonlWriter(path=str(out), drops_path=str(drops)),
    ]

    executor, _ = run_job(service, "notext-skip", stages)

    assert counts(executor) == ("completed", 1, 0, 5, 1, 4)
    assert doc_ids(out) == ["t1"]
    path = data / "docs.jsonl"
    threshold = {"min_words": 1, "max_words": 100000, "lang": "en"}
    assert drop_records(drops) == [
        {"id": f"{path}:2", "stage": "jsonl_reader", "reason": "no 'text' field"},
        {
            "id": f"{path}:3",
            "stage": "jsonl_reader",
            "reason": "field 'text' is number, expected a string",
        },
        {
            "id": f"{path}:4",
            "stage": "jsonl_reader",
            "reason": "field 'text' is null, expected a string",
        },
        {
            "id": "t5",
            "stage": "word_count",
            "reason": "word_count rejected it",
            "score": 0,
            "threshold": threshold,
        },
    ]


def test_without_the_readers_text_check_a_non_string_text_is_named_by_file_and_line(
    service: EmbeddedService, base: Path
) -> None:
    data = inputs(
        base / "untyped",
        number=lines({"id": "n1", "text": "words"}, {"id": "n2", "text": 7}),
        null=lines({"id": "z1", "text": "words"}, {"id": "z2", "text": None}),
    )
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data), text_field=None),
        ScoreFilter(WordCountFilter(min_words=1)),
        JsonlWriter(path=str(base / "untyped-out")),
    ]

    executor, _ = run_job(service, "untyped", stages)

    assert counts(executor) == ("completed_with_failures", 0, 2, 0, 0, 0)
    number, null = data / "number.jsonl", data / "null.jsonl"
    assert dead_letters(service, executor) == {
        str(number): reader_error(
            number,
            2,
            "field 'text' is number, but it was string on line 1 (a field keeps one type in a file)",
        ),
        # The reader was told not to check the text, so the filter finds the null: it names
        # the batch the reader made of the file (not the file) and the row.
        str(null): (
            f"StageError: stage 'word_count' failed in process() on task "
            f"{derive_task_id(content_task_id(str(null)), 'jsonl_reader', 0)}: "
            f"ValueError: column 'text' is null in row 1"
        ),
    }


# -- 6. duplicate ids --------------------------------------------------------------------------


def test_duplicate_document_ids_both_arrive_as_local_gives_them(
    service: EmbeddedService, base: Path
) -> None:
    data = inputs(
        base / "dups",
        a=lines({"id": "dup", "text": "first"}, {"id": "dup", "text": "second"}),
        b=lines({"id": "dup", "text": "third"}),
    )

    def stages(out: Path) -> list[Stage]:
        return [JsonlReader(file_paths=str(data)), JsonlWriter(path=str(out))]

    Pipeline("dups", stages(base / "dups-local")).run(LocalExecutor())
    executor, _ = run_job(service, "dups", stages(base / "dups-out"))

    assert counts(executor) == ("completed", 2, 0, 3, 3, 0)
    assert written(base / "dups-out") == written(base / "dups-local")
    assert doc_ids(base / "dups-out") == ["dup", "dup", "dup"]


# -- 7. a submission over the NATS message limit -----------------------------------------------


def test_a_submission_over_the_nats_message_limit_is_refused_before_publishing(
    service: EmbeddedService, base: Path
) -> None:
    data = inputs(base / "huge", a=GOOD)
    stages: list[Stage] = [
        JsonlReader(file_paths=str(data), dataset_name="x" * 9_000_000),
        JsonlWriter(path=str(base / "huge-out")),
    ]
    before = published(service)

    with pytest.raises(GristmillError) as caught:
        Pipeline("huge", stages).run(ServiceExecutor(service.url))

    message = re.fullmatch(
        r"the submission is (\d+) bytes, more than the NATS server takes in one message "
        r"\(8388608\); pass fewer initial tasks, or inputs as directories or globs",
        str(caught.value),
    )
    assert message is not None, str(caught.value)[:200]
    assert 9_000_000 < int(message.group(1)) < 9_010_000  # the param, and a little spec
    assert published(service) == before


# -- 8. an unregistered stage in a YAML spec (the CLI) -----------------------------------------


def test_the_cli_refuses_a_spec_naming_an_unregistered_stage_and_publishes_nothing(
    service: EmbeddedService, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = inputs(base / "cli", a=GOOD)
    spec = base / "unknown.yaml"
    spec.write_text(
        "name: unknown\nstages:\n  - stage: JsonlReader\n  - stage: NoSuchStage\n"
        "  - stage: JsonlWriter\n"
    )
    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    before = published(service)

    status = main(["submit", str(spec), "--input", str(data), "--output", str(base / "cli-out")])

    installed = ", ".join(sorted({p.name for p in entry_points(group="gristmill.stages")}))
    assert status == 2
    assert capsys.readouterr().err == (
        f"gristmill: error: unknown stage 'NoSuchStage' (registered stages: {installed})\n"
    )
    assert "JsonlReader" in installed
    assert published(service) == before


# -- 9, 10. outputs outside the output root; inputs that are not there -------------------------


def rejected_cases(base: Path) -> dict[str, tuple[list[Stage], str]]:
    data = base / "reject-in"
    data.mkdir(exist_ok=True)
    (data / "a.jsonl").write_bytes(GOOD)

    def writing_to(path: str, drops_path: str | None = None) -> list[Stage]:
        return [JsonlReader(file_paths=str(data)), JsonlWriter(path=path, drops_path=drops_path)]

    def reading(file_paths: str) -> list[Stage]:
        return [JsonlReader(file_paths=file_paths), JsonlWriter(path=str(base / "reject-out"))]

    def outside(key: str, value: str) -> str:
        return (
            f"stage #3 'JsonlWriter': {key} {value!r} is outside the output root {base} this "
            f"service lets the team write to"
        )

    climbing = f"{base}/../escape"
    elsewhere = str(base.parent / "elsewhere")
    glob = f"{data}/nothing-*.jsonl"
    return {
        "climbing": (writing_to(climbing), outside("path", climbing)),
        # made absolute where the user wrote it (this process's working directory)
        "relative climbing": (
            writing_to("../escape"),
            outside("path", os.path.abspath("../escape")),
        ),
        "absolute elsewhere": (writing_to(elsewhere), outside("path", elsewhere)),
        "a URL": (writing_to("memory://x"), outside("path", "memory://x")),
        "drops elsewhere": (
            writing_to(str(base / "ok"), drops_path=elsewhere),
            outside("drops_path", elsewhere),
        ),
        "a glob matching nothing": (reading(glob), f"file_partitioning: {NO_FILES} {glob}"),
        "a path that does not exist": (
            reading(str(data / "absent.jsonl")),
            f"file_partitioning: no such file or directory: {data / 'absent.jsonl'}",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "climbing",
        "relative climbing",
        "absolute elsewhere",
        "a URL",
        "drops elsewhere",
        "a glob matching nothing",
        "a path that does not exist",
    ],
)
def test_a_bad_path_is_rejected_with_the_planners_message_and_nothing_is_published(
    service: EmbeddedService, base: Path, case: str
) -> None:
    stages, message = rejected_cases(base)[case]
    before = published(service)

    with pytest.raises(JobRejected) as caught:
        Pipeline("rejected", stages).run(ServiceExecutor(service.url))

    assert str(caught.value) == message
    assert published(service) == before


# -- 11. an initial task id that cannot name a file --------------------------------------------


@pytest.mark.parametrize("task_id", ["a/b", "..", "a..b"])
def test_an_initial_task_id_that_cannot_name_a_file_is_refused_before_publishing(
    service: EmbeddedService, base: Path, task_id: str
) -> None:
    batch = DocumentBatch(task_id=task_id, data=pa.table({"id": ["x"], "text": ["words"]}))
    pipeline = Pipeline("ids", [JsonlWriter(path=str(base / "ids-out"))])
    before = published(service)

    with pytest.raises(GristmillError) as caught:
        pipeline.run(ServiceExecutor(service.url), initial_tasks=[batch])

    # Refused as the executor prepares its initial tasks, before anything is stored or sent.
    assert type(caught.value) is TaskIdError
    assert str(caught.value) == (
        f"initial task id {task_id!r} cannot be a task id: use 1-128 letters, digits, '_', '-' "
        f"or '.', starting with a letter or digit, and no '..'"
    )
    assert published(service) == before
    assert not (base / "ids-out").exists()
