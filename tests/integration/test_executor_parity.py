"""The same pipelines on LocalExecutor, XennaExecutor (streaming, batch), RayDataExecutor and
ServiceExecutor give the same documents — with a real local Ray and a real service, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))  # before Ray starts: its workers import what the driver can

from quickstart import SentimentStage, TaskCreationStage, WordCountStage  # noqa: E402

from gristmill import BaseExecutor, DocumentBatch, LocalExecutor, Pipeline, Resources  # noqa: E402
from gristmill.embedded import EmbeddedService  # noqa: E402
from gristmill.errors import GristmillError, StageError, TaskIdCollisionError  # noqa: E402
from gristmill.executors.ray_cluster import ray_session  # noqa: E402
from gristmill.executors.ray_data import RayDataExecutor  # noqa: E402
from gristmill.executors.service import JobFailed, ServiceExecutor  # noqa: E402
from gristmill.executors.xenna import XennaExecutor  # noqa: E402
from gristmill.stages.text.classifiers import QualityClassifier  # noqa: E402
from gristmill.stages.text.io import AddId, JsonlReader, JsonlWriter  # noqa: E402
from gristmill.stages.text.models.synthetic import build_text_model  # noqa: E402
from gristmill.stages.text.presets import quality_filters  # noqa: E402
from gristmill.workflows import FuzzyDeduplicationWorkflow  # noqa: E402

from ray_stages import (  # noqa: E402
    AddOne,
    AlwaysFails,
    CountingSetup,
    FailsOnce,
    FixedId,
    MakeBatches,
    QuarterGpu,
)

pytestmark = pytest.mark.integration

EXECUTORS = {
    "local": lambda: LocalExecutor(),
    "xenna-streaming": lambda: XennaExecutor({"execution_mode": "streaming"}),
    "xenna-batch": lambda: XennaExecutor({"execution_mode": "batch"}),
    "ray-data": lambda: RayDataExecutor(),
}


@pytest.fixture(scope="module", autouse=True)
def ray() -> Iterator[None]:
    """One local Ray (with the dashboard xenna needs) for the whole module."""
    with ray_session(dashboard=True):
        yield


@pytest.fixture(scope="module")
def service(ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedService]:
    """The embedded service, its workers on the module's Ray, allowed to write under tmp."""
    state = tmp_path_factory.mktemp("service-state")
    base = str(tmp_path_factory.getbasetemp())
    roots = (base, str(EXAMPLES))
    with EmbeddedService(state, workers=1, slots=2, output_root=base, input_roots=roots) as running:
        yield running


def _executor(name: str, request: pytest.FixtureRequest) -> BaseExecutor:
    if name == "service":
        return ServiceExecutor(request.getfixturevalue("service").url, {"max_deliver": 1})
    return EXECUTORS[name]()


def _fingerprint(tasks: list[Any]) -> list[tuple[str, str, list[str]]]:
    """Sorted (task id, content hash, stage names) of every output task."""
    rows = []
    for task in tasks:
        table = task.to_pandas() if hasattr(task, "to_pandas") else task.data
        content = (
            table.to_json(orient="records") if hasattr(table, "to_json") else json.dumps(table)
        )
        digest = hashlib.sha256(content.encode()).hexdigest()
        rows.append((task.task_id, digest, [p.stage_name for p in task._stage_perf]))
    return sorted(rows)


def _quickstart() -> Pipeline:
    return Pipeline(
        "quickstart",
        [
            TaskCreationStage(num_sentences_per_task=4, num_tasks=7),
            WordCountStage(),
            SentimentStage(),
        ],
    )


@pytest.mark.parametrize("name", ["xenna-streaming", "xenna-batch", "ray-data", "service"])
def test_quickstart_gives_the_local_outputs(name: str, request: pytest.FixtureRequest) -> None:
    expected = _fingerprint(_quickstart().run(LocalExecutor()))
    assert len(expected) == 7
    assert _fingerprint(_quickstart().run(_executor(name, request))) == expected


USER_SCRIPT = Path(__file__).with_name("user_script.py")


def test_a_scripts_own_classes_give_the_same_outputs_on_every_executor_in_one_process() -> None:
    # The script's classes live in its `__main__`; it joins this module's Ray (RAY_ADDRESS).
    assert os.environ["RAY_ADDRESS"]
    result = subprocess.run(
        [sys.executable, str(USER_SCRIPT)], capture_output=True, text=True, timeout=420
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    runs = json.loads(line.removeprefix("RESULT "))
    assert runs["steps"] == 3  # the source fans out, so its five tasks spread over workers
    local = runs["local"]
    assert len(local) == 5
    assert {kind for kind, *_ in local} == {"__main__:SampleTask"}
    assert [stages for *_, stages in local] == [["TaskCreationStage", "WordCountStage", "GoodWordsStage"]] * 5  # fmt: skip
    assert runs["xenna-streaming"] == local
    assert runs["ray-data"] == local


@pytest.mark.parametrize("name", ["xenna-streaming", "xenna-batch", "ray-data"])
def test_two_inputs_making_one_task_id_stop_the_run(name: str) -> None:
    initial = [DocumentBatch(task_id=i, data=pa.table({"n": [n]})) for n, i in enumerate("ab")]
    with pytest.raises(TaskIdCollisionError) as caught:
        Pipeline("collide", [FixedId()]).run(EXECUTORS[name](), initial_tasks=initial)
    # Which input's output the ledger saw first depends on the workers.
    assert re.fullmatch(r"task id 'same' of step 0 'FixedId' was made from two parents, '(a|b)' and '(a|b)'; give each output its own id, or leave task_id empty to have one derived", str(caught.value))  # fmt: skip
    assert sorted(caught.value.parents) == ["a", "b"]


def _corpus(tmp_path: Path) -> str:
    good = (
        "The miller opens the gate at dawn and the river turns the wheel. Farmers bring grain "
        "in carts, and the stones grind it into flour for the village bakers. In the evening "
        "the miller counts the sacks, sweeps the floor and closes the gate again. On market "
        "days the square fills with people who buy bread, and the miller hears the news of "
        "the valley from the carters who wait with their horses by the water."
    )
    docs = [good, "Too short.", good + " buy now" * 60 + ".", "<a>" * 50 + good, good.upper()]
    source = tmp_path / "corpus"
    source.mkdir()
    for part in range(4):
        lines = [json.dumps({"text": f"{d} Part {part} line {i}."}) for i, d in enumerate(docs)]
        (source / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    return str(source)


def _written(directory: Path) -> list[tuple[str, str]]:
    docs = [json.loads(line) for p in directory.iterdir() for line in p.read_text().splitlines()]
    return sorted((d["id"], hashlib.sha256(d["text"].encode()).hexdigest()) for d in docs)


@pytest.mark.parametrize("name", ["xenna-streaming", "xenna-batch", "ray-data", "service"])
def test_text_pipeline_writes_the_documents_local_writes(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = _corpus(tmp_path)

    def run(executor: BaseExecutor, out: Path) -> None:
        stages = [JsonlReader(source), AddId(), *quality_filters(), JsonlWriter(str(out / "data"), drops_path=str(out / "drops"))]  # fmt: skip
        Pipeline("quality", stages).run(executor)

    run(LocalExecutor(), tmp_path / "local")
    run(_executor(name, request), tmp_path / name)
    expected = _written(tmp_path / "local" / "data")
    assert len(expected) == 4  # one good document survives in each file (upper case has no "the")
    assert _written(tmp_path / name / "data") == expected
    assert _written_drops(tmp_path / name / "drops") == _written_drops(tmp_path / "local" / "drops")
    assert sorted(p.name for p in (tmp_path / name / "data").iterdir()) == sorted(p.name for p in (tmp_path / "local" / "data").iterdir())  # fmt: skip


def _near_duplicates(tmp_path: Path) -> str:
    """The sample corpus's documents in three files, with light edits of a few of them."""
    rows = [json.loads(line) for p in sorted((EXAMPLES / "data").glob("*.jsonl")) for line in p.read_text().splitlines()]  # fmt: skip
    edits = [(" the ", " a "), (". ", "; "), (" and ", " & ")]
    copies = [{"id": f"near-{n:02d}", "text": rows[n * 7]["text"].replace(*edits[n % 3], 1)} for n in range(40)]  # fmt: skip
    source = tmp_path / "near"
    source.mkdir()
    everything = rows + copies
    for part in range(3):
        (source / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in everything[part::3]))  # fmt: skip
    return str(source)


def _fuzzy_duplicates(source: str, base: Path, executor: BaseExecutor) -> dict[str, str]:
    workflow = FuzzyDeduplicationWorkflow(
        [JsonlReader(source)],
        str(base / "dups"),
        str(base / "cache"),
        num_shards=4,
        num_partitions=4,
    )
    found = workflow.run(executor)
    tables = [pq.read_table(p) for p in sorted((base / "dups").glob("*.parquet"))]
    listed = {i: k for t in tables for i, k in zip(t["id"].to_pylist(), t["kept_id"].to_pylist(), strict=True)}  # fmt: skip
    assert found == len(listed)
    return listed


@pytest.mark.parametrize("name", ["xenna-streaming", "xenna-batch", "ray-data", "service"])
def test_fuzzy_dedup_removes_the_same_documents_on_every_executor(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = _near_duplicates(tmp_path)
    expected = _fuzzy_duplicates(source, tmp_path / "local", LocalExecutor())
    assert len(expected) >= 40  # every planted copy, and the corpus's own near-duplicates
    assert _fuzzy_duplicates(source, tmp_path / name, _executor(name, request)) == expected


def _written_drops(directory: Path) -> list[tuple[str, str]]:
    return sorted((d["id"], d["stage"]) for p in directory.iterdir() for d in map(json.loads, p.read_text().splitlines()))  # fmt: skip


@pytest.mark.parametrize("name", ["xenna-streaming", "ray-data", "service"])
def test_outputs_are_identical_run_after_run(name: str, request: pytest.FixtureRequest) -> None:
    pipeline = Pipeline("again", [MakeBatches(num_tasks=12), AddOne(), AddOne().with_(name="two")])
    first = _fingerprint(pipeline.run(_executor(name, request)))
    assert _fingerprint(pipeline.run(_executor(name, request))) == first
    assert len(first) == 12


@pytest.mark.parametrize("name", ["xenna-streaming", "ray-data", "service"])
def test_a_stage_is_set_up_once_per_actor_not_per_task(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    log = tmp_path / "setups.log"
    pipeline = Pipeline("setup", [MakeBatches(num_tasks=10), CountingSetup(str(log))])
    outputs = pipeline.run(_executor(name, request))
    setups = log.read_text().split()
    pids = {pid for task in outputs for pid in task.to_pyarrow()["pid"].to_pylist()}
    assert len(outputs) == 10
    assert len(setups) == len(set(setups))  # no process set up twice
    assert {int(p) for p in setups} >= pids  # every process that worked was set up
    assert len(setups) < 10  # far fewer setups than tasks
    assert {s for task in outputs for s in task.to_pyarrow()["setups"].to_pylist()} == {1}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("mode", ["streaming", "batch"])
def test_six_one_cpu_stages_run_on_two_cores(mode: str, fuse: bool) -> None:
    stages = [MakeBatches(num_tasks=6), *[AddOne().with_(name=f"add{i}") for i in range(5)]]
    assert all(s.resources == Resources(cpus=1.0) for s in stages)
    outputs = Pipeline("six", stages).run(XennaExecutor({"execution_mode": mode}), fuse=fuse)
    values = sorted(v for task in outputs for v in task.to_pyarrow()["n"].to_pylist())
    assert values == [n + 5 for n in range(30)]


def test_xenna_retries_a_failing_task_when_asked(tmp_path: Path) -> None:
    pipeline = Pipeline("retry", [MakeBatches(num_tasks=3), FailsOnce(str(tmp_path))])
    # Unfused: a retry repeats one task of FailsOnce, not the batch-making stage before it.
    outputs = pipeline.run(XennaExecutor({"max_retries": {"FailsOnce": 1}}), fuse=False)
    assert len(outputs) == 3


@pytest.mark.parametrize("name", ["xenna-streaming", "ray-data"])
def test_a_stage_that_keeps_failing_is_reported_with_its_name_and_traceback(name: str) -> None:
    pipeline = Pipeline("fail", [MakeBatches(num_tasks=2), AlwaysFails()])
    with pytest.raises(StageError) as caught:
        pipeline.run(EXECUTORS[name]())
    assert str(caught.value).startswith("stage 'AlwaysFails' failed in process() on task ")
    assert str(caught.value).endswith(": ValueError: this stage never works")
    assert 'raise ValueError("this stage never works")' in caught.value.traceback


def test_the_service_reports_a_failing_stage_with_its_name_and_traceback(
    service: EmbeddedService,
) -> None:
    pipeline = Pipeline("fail", [MakeBatches(num_tasks=2), AlwaysFails()])
    with pytest.raises(JobFailed) as caught:
        pipeline.run(ServiceExecutor(service.url, {"max_deliver": 1}), fuse=False)
    message = str(caught.value)
    assert re.match(r"job j[0-9a-f]{15}: 2 task\(s\) failed; first: step 1 task \w+ after 1 attempts: StageError: stage 'AlwaysFails' failed in process\(\) on task \w+: ValueError: this stage never works\n", message)  # fmt: skip
    assert 'raise ValueError("this stage never works")' in message


@pytest.mark.parametrize("name", ["xenna-streaming", "ray-data"])
def test_a_fractional_gpu_stage_is_planned_but_refused_at_run_time_without_a_gpu(name: str) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU: test_four_actors_share_one_gpu covers it")
    pipeline = Pipeline("gpu", [MakeBatches(num_tasks=2), QuarterGpu()])
    assert "gpus=0.25" in pipeline.describe()
    with pytest.raises(GristmillError, match=r"stage 'QuarterGpu' asks for gpus=0.25, but the Ray cluster has no GPU"):  # fmt: skip
        pipeline.run(EXECUTORS[name]())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["xenna-streaming", "ray-data"])
def test_four_actors_share_one_gpu(name: str) -> None:
    outputs = Pipeline("gpu", [MakeBatches(num_tasks=16), QuarterGpu()]).run(EXECUTORS[name]())
    assert len(outputs) == 16
    seen = {g for task in outputs for g in task.to_pyarrow()["gpu"].to_pylist()}
    assert len(seen) == 1  # every actor of the stage saw the same single GPU
    assert next(iter(seen)) not in ("", None)


def _sample_files() -> dict[str, list[dict[str, str]]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted((EXAMPLES / "data").glob("*.jsonl"))}  # fmt: skip


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small quality classifier with random weights (under the service's input roots)."""
    texts = [d["text"] for docs in _sample_files().values() for d in docs]
    words = sorted({w.lower() for t in texts for w in t.split()})[:2000]
    root = tmp_path_factory.mktemp("models") / "quality"
    return build_text_model(root, words, labels=["High", "Medium", "Low"], calibration_texts=texts)


def _by_hand(model: Path, texts: list[str]) -> np.ndarray:
    """Probabilities from onnxruntime directly: each text alone, cut as QualityClassifier cuts."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.enable_truncation(1024)
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for text in texts:
        ids = np.array([tokenizer.encode(text[:6000]).ids], np.int64)
        logits = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        rows.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    return np.stack(rows)


@pytest.mark.parametrize("name", ["local", "xenna-streaming", "ray-data", "service"])
def test_a_classifier_predicts_what_onnxruntime_does_on_every_executor_in_row_order(
    name: str, quality_model: Path, request: pytest.FixtureRequest
) -> None:
    classifier = QualityClassifier(str(quality_model), prob_column="quality_prob", model_inference_batch_size=16)  # fmt: skip
    pipeline = Pipeline("classify", [JsonlReader(str(EXAMPLES / "data")), classifier])
    outputs = pipeline.run(_executor(name, request))
    files = _sample_files()
    by_first_id = {docs[0]["id"]: docs for docs in files.values()}
    assert len(outputs) == len(files)
    for task in outputs:
        table = task.to_pyarrow()
        docs = by_first_id[table["id"][0].as_py()]
        assert table["id"].to_pylist() == [d["id"] for d in docs]  # each file's own order
        expected = _by_hand(quality_model, [d["text"] for d in docs])
        assert table["quality_pred"].to_pylist() == [["High", "Medium", "Low"][i] for i in expected.argmax(1)]  # fmt: skip
        np.testing.assert_allclose(np.array(table["quality_prob"].to_pylist()), expected, atol=1e-5)
    labels = {v for task in outputs for v in task.to_pyarrow()["quality_pred"].to_pylist()}
    assert labels == {"High", "Medium", "Low"}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["xenna-streaming", "ray-data"])
def test_classifier_actors_sharing_a_gpu_predict_what_the_cpu_does(
    name: str, quality_model: Path
) -> None:
    def run(gpus: float) -> pa.Table:
        stage = QualityClassifier(str(quality_model), prob_column="p", gpus=gpus)
        outputs = Pipeline("gpu", [JsonlReader(str(EXAMPLES / "data")), stage]).run(EXECUTORS[name]())  # fmt: skip
        return pa.concat_tables(sorted((t.to_pyarrow() for t in outputs), key=lambda t: t["id"][0].as_py()))  # fmt: skip

    cpu, gpu = run(0.0), run(0.25)
    assert gpu["id"].to_pylist() == cpu["id"].to_pylist()
    assert gpu["quality_pred"].to_pylist() == cpu["quality_pred"].to_pylist()
    np.testing.assert_allclose(np.array(gpu["p"].to_pylist()), np.array(cpu["p"].to_pylist()), atol=1e-3)  # fmt: skip
