"""Benchmark: a continuous job on the real service: a file's latency, and throughput against batch.

    .venv/bin/python bench/continuous_latency.py [--files 30] [--notified 5] [--burst 60]
        [--file-mb 1.0] [--poll-s 0.2] [--budget-s 300] [--seed 1]

One embedded service (NATS, planner, coordinator, one CPU worker of 2 slots: `EmbeddedService`'s
defaults) runs `examples/pipelines/continuous.yaml` (JsonlReader, WordCount and
RepeatingTopNGrams filters, exact dedup against a named index, JsonlWriter). Each job gets an
index of its own (`bench-<uuid>`), so no dedup history carries across jobs or runs. Input files
are `--file-mb` of JSONL made here, {"id", "text"} with 70-150 words of varied text each (2%
of them 20 words, for the word-count filter to drop), ids unique across all files, so nothing is
a duplicate. A file is put into an inbox the safe way: written under a hidden name
(`.<name>.tmp`), then renamed into place; its arrival is the time just after the rename.

1. latency, polling: a continuous job (`--poll-s`) takes a warm-up file (so the worker's actors
   of its steps exist; not counted), then, on the idle service, `--files` files one at a time.
   After each, `client.status(job)` is polled (0.1 s apart, with a deadline) until `files.done`
   counts it, then the file's lineage record (`<out>/_lineage/<task>.json`) is read. Latency =
   the record's `done_at` (the worker's clock when its output was final, on this machine) minus
   the arrival; split into pickup (`seen_at`, when the planner took it: two listings `poll_s`
   apart must agree) and processing (`done_at - seen_at`). The time the status first showed it
   done is reported beside them. Targets: p50 <= 2 s, p99 <= 5 s (with 30 files, p99 is the
   worst one).
2. latency, notified: a second continuous job whose inbox is listed only every 600 s takes a
   warm-up file and `--notified` files from `client.notify(job, [path])` sent right after
   each rename. Reported apart; no target.
3. throughput: a third continuous job, its inbox empty; once it runs, `--burst` files are
   renamed into it at once, and the time runs from the first rename to the last file's
   `done_at`. Then the same files, as a batch job (`inputs=[that inbox]`, a fresh index and
   output), from submit to its final state (`client.wait`). docs/s = documents in / seconds;
   target: continuous >= 90% of batch. The continuous job's time includes taking the files
   (two listings `poll_s` apart must agree, so 0.2-0.4 s): a fixed cost, which 60 files (about
   15 s of work) spread thin enough to measure the steady rate.

Every wait has a deadline inside `--budget-s`; the bench exits 1 when a target is missed or
something did not finish in time. A JSON summary ends the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.bus import ContinuousOptions, JobSpec, JobState
from gristmill.client import ServiceClient
from gristmill.embedded import EmbeddedService
from gristmill.pipeline.spec import load_spec

__all__ = ["Corpus", "Drop", "main"]

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "examples" / "pipelines" / "continuous.yaml"
POLL_STATUS_S = 0.1
P50_TARGET_S = 2.0
P99_TARGET_S = 5.0
THROUGHPUT_TARGET = 0.90
NOTIFY_POLL_S = 600.0  # the notified job's inbox: listed too seldom to take anything itself


class OutOfTime(Exception):
    """A wait ran past its deadline (or the bench's budget)."""


class Corpus:
    """Makes JSONL files of distinct documents (ids unique across every file it makes)."""

    def __init__(self, seed: int, file_bytes: int):
        self.rng = random.Random(seed)
        self.file_bytes = file_bytes
        letters = "abcdefghijklmnopqrstuvwxyz"
        syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + list("aeiou")
        self.words = sorted(
            {
                "".join(self.rng.choices(syllables, k=self.rng.randint(1, 4)))
                + self.rng.choice(letters + "     ").strip()
                for _ in range(30_000)
            }
        )
        self.documents = 0

    def _text(self, words: int) -> str:
        chosen = self.rng.choices(self.words, k=words)
        sentences, at = [], 0
        while at < words:
            length = self.rng.randint(6, 18)
            sentence = " ".join(chosen[at : at + length])
            sentences.append(sentence[:1].upper() + sentence[1:] + self.rng.choice(".!?."))
            at += length
        return " ".join(sentences)

    def file(self) -> tuple[bytes, int]:
        """One file's bytes (about `file_bytes`) and its number of documents."""
        lines, size, count = [], 0, 0
        while size < self.file_bytes:
            words = 20 if self.rng.random() < 0.02 else self.rng.randint(70, 150)
            self.documents += 1
            line = json.dumps({"id": f"doc-{self.documents:08d}", "text": self._text(words)})
            lines.append(line)
            size += len(line) + 1
            count += 1
        return ("\n".join(lines) + "\n").encode(), count


@dataclass
class Drop:
    """One file put into an inbox, and what its lineage record said."""

    path: Path
    documents: int
    arrived: float
    observed: float = 0.0  # when the status first counted it done
    seen_at: float = 0.0
    done_at: float = 0.0
    items_in: int = 0

    @property
    def latency(self) -> float:
        return self.done_at - self.arrived

    @property
    def pickup(self) -> float:
        return self.seen_at - self.arrived

    @property
    def processing(self) -> float:
        return self.done_at - self.seen_at


def hide_then_rename(data: bytes, inbox: Path, name: str) -> tuple[Path, float]:
    """Write `data` under a hidden name in `inbox`, rename it into place; the path and the time
    just after the rename (its arrival)."""
    hidden = inbox / f".{name}.tmp"
    hidden.write_bytes(data)
    target = inbox / name
    os.rename(hidden, target)
    return target, time.time()


class Bench:
    """The service, a client, the corpus, and the bench's deadline."""

    def __init__(self, client: ServiceClient, base: Path, corpus: Corpus, args: Any):
        self.client, self.base, self.corpus, self.args = client, base, corpus, args
        self.deadline = time.monotonic() + args.budget_s
        self.jobs = 0

    def left(self, most: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OutOfTime("the bench ran past --budget-s")
        return min(most, left)

    def spec(self, name: str, inputs: Path, out: Path, poll_s: float | None) -> JobSpec:
        """The example pipeline as a job of its own index; continuous unless `poll_s` is None."""
        pipeline = load_spec(str(PIPELINE)).to_dict()
        for stage in pipeline["stages"]:
            if stage["stage"] == "ExactDuplicateRemoval":
                stage["params"]["index"] = f"bench-{uuid.uuid4().hex[:12]}"
        return JobSpec(
            team="default",
            request_id=f"{name}-{uuid.uuid4().hex[:12]}",
            pipeline=pipeline,
            inputs=[str(inputs)],
            output=str(out),
            continuous=None if poll_s is None else ContinuousOptions(poll_s=poll_s),
        )

    async def state(self, job: str) -> JobState:
        [state] = await self.client.status(job)
        return state

    async def until_done(self, job: str, files: int, timeout_s: float = 60.0) -> JobState:
        """Poll the job's state until `files.done` reaches `files`."""
        deadline = time.monotonic() + self.left(timeout_s)
        while True:
            state = await self.state(job)
            if state.files is not None and state.files.done >= files:
                return state
            if time.monotonic() > deadline:
                raise OutOfTime(f"{files} files not done in time; {await self.explain(job)}")
            await asyncio.sleep(POLL_STATUS_S)

    async def explain(self, job: str) -> str:
        """What the service says of a job that is late: its counts, and each worker's steps."""
        status = await self.client.service_status(job)
        [state] = status.jobs
        files = state.files.model_dump(exclude={"schema_version"}) if state.files else None
        steps = [s.model_dump(include={"name", "published", "done", "failed"}) for s in state.steps]
        workers = [
            w.model_dump(include={"worker", "status", "running", "steps", "actors_busy"})
            for w in status.workers
        ]
        return f"job {job} {state.state}: files {files}; steps {steps}; workers {workers}"

    async def running(self, job: str) -> None:
        """Wait for the planner to have started the job (its watcher runs)."""
        deadline = time.monotonic() + self.left(60.0)
        while (await self.state(job)).state == "pending":
            if time.monotonic() > deadline:
                raise OutOfTime(f"job {job} did not start")
            await asyncio.sleep(POLL_STATUS_S)

    async def lineage(self, out: Path, drops: list[Drop], timeout_s: float = 30.0) -> None:
        """Fill each drop in from its lineage record (written just after the file is done)."""
        deadline = time.monotonic() + self.left(timeout_s)
        wanted = {str(d.path): d for d in drops}
        while True:
            records = [json.loads(p.read_bytes()) for p in (out / "_lineage").glob("*.json")]
            found = {r["input"]: r for r in records if r["input"] in wanted}
            if len(found) == len(wanted):
                break
            if time.monotonic() > deadline:
                missing = sorted(set(wanted) - set(found))
                raise OutOfTime(f"no lineage record for {missing[:3]}")
            await asyncio.sleep(POLL_STATUS_S)
        for path, record in found.items():
            drop = wanted[path]
            drop.seen_at, drop.done_at = record["seen_at"], record["done_at"]
            drop.items_in = record["documents"]["in"]

    async def stop(self, job: str) -> JobState:
        await self.client.stop(job)
        return await self.client.wait(job, timeout_s=self.left(60.0))

    def dirs(self, name: str) -> tuple[Path, Path]:
        inbox, out = self.base / name / "in", self.base / name / "out"
        inbox.mkdir(parents=True)
        return inbox, out

    async def one_at_a_time(self, name: str, count: int, notify: bool) -> list[Drop]:
        """`count` files into a fresh continuous job's inbox, each once the one before is done
        (and one before them, a warm-up that starts the job's actors, not counted)."""
        inbox, out = self.dirs(name)
        poll_s = NOTIFY_POLL_S if notify else self.args.poll_s
        job = await self.client.submit(self.spec(name, inbox, out, poll_s))
        await self.running(job)
        drops = []
        for i in range(count + 1):
            data, documents = self.corpus.file()
            path, arrived = hide_then_rename(data, inbox, f"f{i:03d}.jsonl")
            if notify:
                await self.client.notify(job, [str(path)])
            drop = Drop(path, documents, arrived)
            await self.until_done(job, i + 1)
            drop.observed = time.time()
            await self.lineage(out, [drop])
            drops.append(drop)
        final = await self.stop(job)
        print(f"  {name}: job {job} {final.state}, {final.items_in:,} documents in", flush=True)
        return drops[1:]

    async def burst(self, count: int) -> dict[str, Any]:
        """`count` files at once into a running continuous job, then as one batch job."""
        inbox, out = self.dirs("burst")
        job = await self.client.submit(self.spec("burst", inbox, out, self.args.poll_s))
        await self.running(job)
        made = [self.corpus.file() for _ in range(count)]
        drops = []
        for i, (data, documents) in enumerate(made):
            hidden = inbox / f".b{i:03d}.jsonl.tmp"
            hidden.write_bytes(data)
            drops.append(Drop(hidden, documents, 0.0))
        first = time.time()
        for drop in drops:
            target = drop.path.with_name(drop.path.name[1:].removesuffix(".tmp"))
            os.rename(drop.path, target)
            drop.path, drop.arrived = target, time.time()
        await self.until_done(job, count, timeout_s=180.0)
        observed = time.time()
        await self.lineage(out, drops)
        final = await self.stop(job)
        documents = sum(d.items_in for d in drops)
        continuous_s = max(d.done_at for d in drops) - first
        print(f"  burst: job {job} {final.state}, {documents:,} documents in", flush=True)

        batch_out = self.base / "batch" / "out"
        submitted = time.time()
        batch = await self.client.submit(self.spec("batch", inbox, batch_out, None))
        done = await self.client.wait(batch, timeout_s=self.left(180.0))
        waited = time.time()
        if done.state != "completed":
            raise OutOfTime(f"batch job {batch} ended {done.state}: {done.error}")
        batch_end = done.finished_at or waited
        batch_s = batch_end - submitted
        print(f"  batch: job {batch} {done.state}, {done.items_in:,} documents in", flush=True)
        if done.items_in != documents or final.items_out != done.items_out:
            raise OutOfTime(
                f"the batch job counted {done.items_in} in / {done.items_out} out, the "
                f"continuous one {documents} / {final.items_out}"
            )
        return {
            "files": count,
            "documents": documents,
            "continuous_s": continuous_s,
            "continuous_observed_s": observed - first,
            "batch_s": batch_s,
            "batch_observed_s": waited - submitted,
            "continuous_docs_s": documents / continuous_s,
            "batch_docs_s": done.items_in / batch_s,
            "ratio": (documents / continuous_s) / (done.items_in / batch_s),
            "kept": final.items_out,
        }


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least `p` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def summary(drops: list[Drop]) -> dict[str, Any]:
    latencies = [d.latency for d in drops]
    return {
        "files": len(drops),
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
        "min_s": min(latencies),
        "pickup_p50_s": statistics.median(d.pickup for d in drops),
        "processing_p50_s": statistics.median(d.processing for d in drops),
        "processing_max_s": max(d.processing for d in drops),
        "observed_p50_s": statistics.median(d.observed - d.arrived for d in drops),
        "observed_max_s": max(d.observed - d.arrived for d in drops),
        "documents_per_file": round(statistics.mean(d.items_in for d in drops)),
    }


def print_latency(name: str, s: dict[str, Any]) -> None:
    print(
        f"{name}: {s['files']} files, latency (lineage done_at - rename) p50 {s['p50_s']:.2f} s, "
        f"p99 {s['p99_s']:.2f} s, min {s['min_s']:.2f} s; pickup p50 {s['pickup_p50_s']:.2f} s, "
        f"processing p50 {s['processing_p50_s']:.2f} s (max {s['processing_max_s']:.2f}); "
        f"status saw it done after p50 {s['observed_p50_s']:.2f} s (max "
        f"{s['observed_max_s']:.2f}); {s['documents_per_file']:,} documents a file",
        flush=True,
    )


async def run(service: EmbeddedService, base: Path, args: Any) -> dict[str, Any]:
    client = await ServiceClient.connect(service.url)
    try:
        corpus = Corpus(args.seed, int(args.file_mb * 1_000_000))
        bench = Bench(client, base, corpus, args)
        print("latency, polled:", flush=True)
        polled = summary(await bench.one_at_a_time("polled", args.files, notify=False))
        print_latency("polled", polled)
        print("latency, notified:", flush=True)
        notified = summary(await bench.one_at_a_time("notified", args.notified, notify=True))
        print_latency("notified", notified)
        print("throughput:", flush=True)
        burst = await bench.burst(args.burst)
        print(
            f"throughput: {burst['files']} files, {burst['documents']:,} documents: continuous "
            f"{burst['continuous_s']:.2f} s (first rename -> last done_at; status saw all done "
            f"after {burst['continuous_observed_s']:.2f} s) = {burst['continuous_docs_s']:,.0f} "
            f"docs/s; batch {burst['batch_s']:.2f} s (submit -> finished_at; wait returned after "
            f"{burst['batch_observed_s']:.2f} s) = {burst['batch_docs_s']:,.0f} docs/s; "
            f"ratio {burst['ratio']:.2f}",
            flush=True,
        )
        return {"polled": polled, "notified": notified, "throughput": burst}
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30, help="files for the polled latency")
    parser.add_argument("--notified", type=int, default=5, help="files for the notified one")
    parser.add_argument("--burst", type=int, default=60, help="files for the throughput")
    parser.add_argument("--file-mb", type=float, default=1.0)
    parser.add_argument("--poll-s", type=float, default=0.2, help="the jobs' listing interval")
    parser.add_argument("--budget-s", type=float, default=300.0, help="the whole bench's bound")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", help="run under this new directory and keep it (the logs)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    failures = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            base = Path(args.keep).resolve()
            base.mkdir(parents=True)
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gm-cont-")))
            base = base.resolve()
        options = {"output_root": str(base), "input_roots": (str(base),)}
        with EmbeddedService(base / "state", **options) as service:  # type: ignore[arg-type]
            print(f"service up in {time.monotonic() - began:.1f} s", flush=True)
            try:
                results = asyncio.run(run(service, base, args))
            except OutOfTime as exc:
                print(f"FAILED: {exc}")
                return 1
    polled, burst = results["polled"], results["throughput"]
    checks = [
        ("polled p50 <= 2 s", polled["p50_s"] <= P50_TARGET_S),
        ("polled p99 <= 5 s", polled["p99_s"] <= P99_TARGET_S),
        ("continuous >= 90% of batch docs/s", burst["ratio"] >= THROUGHPUT_TARGET),
    ]
    for name, ok in checks:
        print(f"target {name}: {'met' if ok else 'MISSED'}")
        if not ok:
            failures.append(name)
    results["wall_s"] = time.monotonic() - began
    results["targets_met"] = dict(checks)
    print(json.dumps(results, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
