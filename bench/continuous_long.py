"""Benchmark: a continuous job's coordinator state over a long run, simulated (no service).

    .venv/bin/python bench/continuous_long.py [--files 10000] [--days 7] [--snapshot-every 200]
        [--seed 1] [--repeats 7] [--keep-closing]

One continuous job (a file-partitioning step 0 and one processing step 1; files go to step 1)
takes `--files` small files over `--days` simulated days. The events the coordinator would read
are made up front, as JSON bytes, in the order of their simulated times:

- per file, `FilesIngested` at its arrival (Poisson, a tenth of them in bursts of 2-8 files a
  second apart), then its step 1 `TasksDone` a simulated 2-300 s later (one writer output id and
  a small inline output ref). Latencies overlap arrivals, so files finish out of order;
- for 1% of files, a repeated `TasksDone` up to an hour after the first (a redelivery), which
  must change nothing (the whole snapshot is compared before and after);
- for 1% of files, a repeated `FilesIngested` while the file is pending (a planner repeat);
- for 0.5% of files, a dead letter first: `TaskFailed`, then `TaskRetried`, then the done.

They are applied to `services.coordinator.tracking.JobTracker` as the coordinator does: each
parsed from its bytes, its `clock` the simulated clock, and, after each event, every file in
`ledger.closing` forgotten (the service writing its lineage). Every `--snapshot-every` events
the tracker is dumped (`services.coordinator.snapshot.dump`), as the coordinator's snapshot loop
does every 10 s.

Each time the thousandth, two-thousandth, ... file is done, at the first moment after it with no
file pending (so the figures do not depend on how many files happen to be in flight):

- memory: the snapshot's bytes, the Python heap a tracker rebuilt by `load` holds (tracemalloc,
  after a warm-up load), and the live tracker's objects (a walk of `gc.get_referents`);
- restart: `load` of the last snapshot before that moment, then replay of the `--snapshot-every`
  events after it (parse and apply each, forget what closed): the longest tail a restart between
  two snapshots replays. The median of `--repeats`. The replayed tracker must dump to the next
  snapshot's bytes exactly.

Targets: the first and the last thousand within 10% on memory, and on restart time within 10%
or 2 ms (a restart is a few ms; the scheduler's noise on this machine is about a millisecond).
Checks: files seen == done == `--files`; step 1's documents in == out + dropped == what the
events carried; one lineage write per file; after the input is closed, the job is completed.
`--keep-closing` never forgets closed files (a service that never writes lineage): memory grows,
and the bench must fail. Exit 1 when a target or a check fails.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import heapq
import itertools
import random
import statistics
import sys
import time
import tracemalloc
import types
from dataclasses import dataclass, field
from typing import Any

from gristmill.bus import (
    DataRef,
    FilesIngested,
    IngestedFile,
    InputClosed,
    JobStarted,
    StepInfo,
    TaskFailed,
    TaskResult,
    TaskRetried,
    TasksDone,
)
from services.coordinator.snapshot import dump, load
from services.coordinator.tracking import JobTracker

__all__ = ["Event", "SimClock", "Workload", "apply", "deep_size", "main", "make_workload"]

JOB = "c0ffee00c0ffee00c0ffee00c0ffee00"
MEMORY_TOLERANCE = 0.10
RESTART_TOLERANCE = 0.10
RESTART_FLOOR_S = 0.002
KINDS: dict[str, Any] = {
    "files": FilesIngested,
    "task_done": TasksDone,
    "task_failed": TaskFailed,
    "task_retried": TaskRetried,
}


@dataclass(frozen=True)
class Event:
    """One event as the coordinator reads it: its kind, its bytes, and its simulated time."""

    at: float
    kind: str
    payload: bytes
    repeat: bool = False  # a redelivery or repeat, which must change nothing


@dataclass
class Workload:
    """The events of one simulated run, and what they add up to."""

    started: JobStarted
    events: list[Event]
    items_in: int = 0
    items_out: int = 0
    items_dropped: int = 0
    repeats: int = 0
    dead_letters: int = 0
    roots: list[str] = field(default_factory=list)


class SimClock:
    """The tracker's clock: the simulated time of the event being applied."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _inline_ref(rng: random.Random, rows: int) -> DataRef:
    raw = rng.randbytes(48)
    return DataRef(
        inline=base64.b64encode(raw).decode(),
        rows=rows,
        bytes=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def make_workload(files: int, days: float, seed: int) -> Workload:
    """The events of `files` files arriving over `days` simulated days (module docstring)."""
    rng = random.Random(seed)
    span = days * 86_400.0
    started = JobStarted(
        job=JOB,
        team="default",
        pipeline="continuous",
        steps=[
            StepInfo(name="file_partitioning", pool="cpu"),
            StepInfo(name="jsonl_reader|score_filter|exact_duplicate_removal", pool="cpu"),
        ],
        first_step=1,
        submitted_at=0.0,
        continuous=True,
        output="",
    )
    work = Workload(started, [])
    heap: list[tuple[float, int, Event]] = []
    order = itertools.count()  # ties at one time keep the order they were made in

    def push(at: float, kind: str, message: Any, repeat: bool = False) -> None:
        event = Event(at, kind, message.to_json(), repeat)
        heapq.heappush(heap, (at, next(order), event))

    gaps: list[float | None] = []  # None: the next file of a burst, a second later
    while len(gaps) < files:
        gaps.append(rng.expovariate(1.0))
        if rng.random() < 0.1 / 5:  # a tenth of the files come in bursts of 2-8
            gaps += [None] * rng.randint(1, 7)
    gaps = gaps[:files]
    bursts = sum(1 for g in gaps if g is None)
    scale = (span - bursts) / sum(g for g in gaps if g is not None)  # the last arrives at `span`
    t = 0.0
    for i, gap in enumerate(gaps):
        t += 1.0 if gap is None else gap * scale
        root = _hex(rng)
        work.roots.append(root)
        seen = IngestedFile(
            path=f"/in/f{i}.jsonl",
            size=rng.randint(2_000, 50_000),
            mtime=t - 1,
            task_id=root,
            seen_at=t,
        )
        ingested = FilesIngested(job=JOB, step=1, files=[seen])
        push(t, "files", ingested)
        latency = rng.uniform(2.0, 300.0)
        if rng.random() < 0.01:
            push(t + rng.uniform(0.0, latency), "files", ingested, repeat=True)
        done_at = t + latency
        if rng.random() < 0.005:  # dead-lettered first, retried, then done
            work.dead_letters += 1
            failed_at = t + rng.uniform(1.0, latency / 2)
            push(
                failed_at,
                "task_failed",
                TaskFailed(job=JOB, step=1, task_id=root, error="boom", attempts=5, root=root),
            )
            push(
                failed_at + 1.0,
                "task_retried",
                TaskRetried(job=JOB, step=1, task_id=root, root=root),
            )
        items_in = rng.randint(5, 400)
        dropped = rng.randint(0, items_in // 3)
        kept = items_in - dropped
        by_words = rng.randint(0, dropped)
        result = TaskResult(
            task_id=root,
            output_ids=[_hex(rng)],
            outputs=[_inline_ref(rng, kept)],
            items_in=items_in,
            items_out=kept,
            items_dropped=dropped,
            wall_time_s=rng.uniform(0.05, 2.0),
            dropped_by={"WordCountFilter": by_words, "exact_duplicate_removal": dropped - by_words},
            root=root,
        )
        done = TasksDone(
            job=JOB, step=1, key=root, results=[result], attempt=1, worker="w0", at=done_at
        )
        push(done_at, "task_done", done)
        if rng.random() < 0.01:
            work.repeats += 1
            push(done_at + rng.uniform(1.0, 3_600.0), "task_done", done, repeat=True)
        work.items_in += items_in
        work.items_out += kept
        work.items_dropped += dropped
    while heap:
        work.events.append(heapq.heappop(heap)[2])
    return work


def apply(
    tracker: JobTracker, event: Event, clock: SimClock, keep_closing: bool = False
) -> list[Any]:
    """Apply one event as the coordinator does; returns the files it closed (their lineage)."""
    clock.now = event.at
    message = KINDS[event.kind].from_json(event.payload)
    if event.kind == "files":
        tracker.on_files(message)
    elif event.kind == "task_done":
        tracker.on_done(message)
    elif event.kind == "task_failed":
        tracker.on_failed(message)
    else:
        tracker.on_retried(message)
    ledger = tracker.ledger
    assert ledger is not None
    if keep_closing:
        return []
    closed = list(ledger.closing.values())
    for file in closed:
        ledger.forget(file.root)
    return closed


def fresh(started: JobStarted, clock: SimClock) -> JobTracker:
    """A tracker that has seen the job start, on the simulated clock."""
    tracker = JobTracker(JOB)
    tracker.clock = clock
    tracker.on_started(started)
    return tracker


def deep_size(root: object, skip: tuple[object, ...] = ()) -> int:
    """Bytes of the objects reachable from `root` (classes, modules and functions excluded)."""
    shared = (
        type,
        types.ModuleType,
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodType,
    )
    seen = {id(s) for s in skip}
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def heap_of_load(payload: bytes) -> int:
    """Python heap bytes a tracker rebuilt from `payload` holds (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    snapshot = load(payload)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert snapshot is not None
    return after - before


@dataclass
class Checkpoint:
    """The state when the `files`-th file was done (at the first quiet moment after)."""

    files: int
    event: int  # events applied
    sim_day: float
    snapshot_bytes: int
    heap_bytes: int = 0
    live_bytes: int = 0
    load_s: float = 0.0
    replay_s: float = 0.0
    restart_s: float = 0.0
    replayed: int = 0


def restart(
    work: Workload, snaps: dict[int, bytes], at: int, every: int, repeats: int, keep_closing: bool
) -> tuple[float, float, float]:
    """Median load, replay and total seconds of a restart from snapshot `at` replaying `every`
    events; the replayed tracker must dump to snapshot `at + every`."""
    loads, replays, totals = [], [], []
    for _ in range(repeats):
        clock = SimClock()
        gc.collect()
        begin = time.perf_counter()
        snapshot = load(snaps[at])
        loaded = time.perf_counter()
        assert snapshot is not None
        tracker = snapshot.jobs[JOB]
        tracker.clock = clock
        for event in work.events[at : at + every]:
            apply(tracker, event, clock, keep_closing)
        end = time.perf_counter()
        loads.append(loaded - begin)
        replays.append(end - loaded)
        totals.append(end - begin)
        if dump({JOB: tracker}, at + every) != snaps[at + every]:
            raise AssertionError(
                f"a restart from event {at} replayed to another state than the live one"
            )
    return statistics.median(loads), statistics.median(replays), statistics.median(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--snapshot-every", type=int, default=200, help="events between snapshots")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="restarts timed per checkpoint")
    parser.add_argument("--keep-closing", action="store_true", help="never forget closed files")
    args = parser.parse_args(argv)
    if args.files < 2_000:
        parser.error("--files must be at least 2000 (the first and the last thousand)")
    wall = time.perf_counter()
    every = args.snapshot_every
    work = make_workload(args.files, args.days, args.seed)
    print(
        f"{args.files:,} files over {args.days:g} simulated days: {len(work.events):,} events "
        f"({work.repeats} repeated done records, {work.dead_letters} dead letters), "
        f"a snapshot every {every} events; made in {time.perf_counter() - wall:.1f} s"
    )

    clock = SimClock()
    tracker = fresh(work.started, clock)
    jobs = {JOB: tracker}
    snaps: dict[int, bytes] = {0: dump(jobs, 0)}
    lineage: dict[str, Any] = {}
    checkpoints: list[Checkpoint] = []
    next_mark = 1_000
    failures: list[str] = []
    ledger = tracker.ledger
    assert ledger is not None
    load(snaps[0])  # warm-up: the first load builds pydantic's validators
    for index, event in enumerate(work.events, start=1):
        before = dump(jobs, 0) if event.repeat else b""
        for closed in apply(tracker, event, clock, args.keep_closing):
            if closed.root in lineage:
                failures.append(f"file {closed.path} was closed twice")
            lineage[closed.root] = closed
        if event.repeat and dump(jobs, 0) != before:
            failures.append(f"a repeated {event.kind} event (#{index}) changed the tracker")
        if index % every == 0:
            snaps[index] = dump(jobs, index)
        quiet = not ledger.files and (args.keep_closing or not ledger.closing)
        if ledger.done >= next_mark and quiet:
            payload = dump(jobs, index)
            checkpoints.append(
                Checkpoint(
                    files=next_mark,
                    event=index,
                    sim_day=event.at / 86_400,
                    snapshot_bytes=len(payload),
                    heap_bytes=heap_of_load(payload),
                    live_bytes=deep_size(tracker, skip=(clock,)),
                )
            )
            next_mark += 1_000

    for mark in checkpoints:
        start = max(0, (mark.event // every - 1) * every)  # the last full interval before it
        mark.load_s, mark.replay_s, mark.restart_s = restart(
            work, snaps, start, every, args.repeats, args.keep_closing
        )
        mark.replayed = every

    print()
    print_table(checkpoints)
    failures += flatness(checkpoints)
    failures += final_checks(tracker, work, lineage, args.files, args.keep_closing)
    print(f"wall time {time.perf_counter() - wall:.1f} s")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


COLUMNS = (
    "files done",
    "events",
    "sim day",
    "snapshot B",
    "heap of load() B",
    "live tracker B",
    "load ms",
    "replay ms",
    "restart ms",
)


def print_table(checkpoints: list[Checkpoint]) -> None:
    """The checkpoints as a Markdown table."""
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " ---: |" * len(COLUMNS))
    for m in checkpoints:
        cells = [
            f"{m.files:,}",
            f"{m.event:,}",
            f"{m.sim_day:.2f}",
            f"{m.snapshot_bytes:,}",
            f"{m.heap_bytes:,}",
            f"{m.live_bytes:,}",
            f"{m.load_s * 1e3:.2f}",
            f"{m.replay_s * 1e3:.2f}",
            f"{m.restart_s * 1e3:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


def flatness(checkpoints: list[Checkpoint]) -> list[str]:
    """The first thousand files against the last: memory and restart time; what missed."""
    if len(checkpoints) < 2:
        return [f"only {len(checkpoints)} checkpoints were reached"]
    failures = []
    first, last = checkpoints[0], checkpoints[-1]
    print()
    for name, a, b in (
        ("snapshot bytes", first.snapshot_bytes, last.snapshot_bytes),
        ("heap of load()", first.heap_bytes, last.heap_bytes),
        ("live tracker", first.live_bytes, last.live_bytes),
    ):
        change = b / a - 1
        ok = abs(change) <= MEMORY_TOLERANCE
        verdict = "ok" if ok else "MISSED"
        print(f"{name}: {a:,} -> {b:,} B ({change:+.1%}; target within 10%) {verdict}")
        if not ok:
            failures.append(f"{name} grew {change:+.1%} from the first to the last thousand files")
    diff = last.restart_s - first.restart_s
    change = last.restart_s / first.restart_s - 1
    ok = abs(change) <= RESTART_TOLERANCE or abs(diff) <= RESTART_FLOOR_S
    print(
        f"restart: {first.restart_s * 1e3:.2f} -> {last.restart_s * 1e3:.2f} ms "
        f"({change:+.1%}, {diff * 1e3:+.2f} ms; target within 10% or 2 ms, since a restart "
        f"takes a few ms and scheduling noise here is about 1 ms) {'ok' if ok else 'MISSED'}"
    )
    if not ok:
        failures.append(f"restart time changed {change:+.1%} ({diff * 1e3:+.2f} ms)")
    return failures


def final_checks(
    tracker: JobTracker, work: Workload, lineage: dict[str, Any], files: int, keep_closing: bool
) -> list[str]:
    """Files and documents counted exactly, one lineage record a file, the stopped job
    completed; what failed."""
    failures = []
    state = tracker.state()
    counts = state.files
    assert counts is not None
    step = state.steps[1]
    if not (counts.seen == counts.done == files):
        failures.append(f"files seen {counts.seen}, done {counts.done}, expected {files}")
    carried = (work.items_in, work.items_out, work.items_dropped)
    counted = (step.items_in, step.items_out, step.items_dropped)
    if counted != carried or step.items_in != step.items_out + step.items_dropped:
        failures.append(f"documents in/out/dropped {counted}, the events carried {carried}")
    if not keep_closing:
        if len(lineage) != files:
            failures.append(f"{len(lineage)} lineage records for {files} files")
        lined = (
            sum(c.items_in for c in lineage.values()),
            sum(c.items_out for c in lineage.values()),
            sum(c.items_dropped for c in lineage.values()),
        )
        if lined != carried:
            failures.append(f"lineage documents {lined}, the events carried {carried}")
    if state.tasks_failed or state.retries != work.dead_letters:
        failures.append(
            f"{state.tasks_failed} tasks failed and {state.retries} retried "
            f"(expected 0 and {work.dead_letters})"
        )
    tracker.on_input_closed(InputClosed(job=JOB, files=files, at=tracker.clock()))
    final = tracker.state()
    if final.state != "completed" and not keep_closing:
        failures.append(f"the stopped job is {final.state}, not completed")
    print(
        f"\nfiles seen {counts.seen:,}, done {counts.done:,}; documents in {step.items_in:,} = "
        f"out {step.items_out:,} + dropped {step.items_dropped:,}; "
        f"lineage records {len(lineage):,}; retries {state.retries}; after stop: {final.state}"
    )
    return failures


if __name__ == "__main__":
    sys.exit(main())
