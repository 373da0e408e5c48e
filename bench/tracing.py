"""Benchmark: what tracing every task attempt costs the gristmill service, on this machine.

    .venv/bin/python bench/tracing.py [--docs 100000] [--files 16] [--noop-tasks 5000]
                                      [--rounds 2]

`--rounds` times, alternately untraced then traced (so a drift of the machine during the bench
falls on both), a fresh embedded service is started (NATS, planner, coordinator, 2 CPU workers
of 1 slot each on one local Ray, as `bench/service.py`'s), its children started with
`GRISTMILL_TRACING=0` or `=1`, and on it, in this order:

1. text pipeline: `bench/service.py`'s (JsonlReader -> 3 ScoreFilters -> ParquetWriter over
   `bench/text_quality.py`'s corpus), one warm-up run, then the best of two;
2. dispatch rate: `bench/service.py`'s fan-out into `--noop-tasks` no-op tasks, once cold (to
   start the no-op step's actors), then the best of two warm runs; manifests/s as that bench
   counts them (first -> last `TasksDone` of the no-op step);
3. the check that the comparison is honest: once the runs' spans had time to be exported, the
   span store must hold spans for the text job (`ServiceClient.trace`) and for the dispatch
   jobs when traced, and none at all when untraced.

The CPU seconds the service's own processes (planner, coordinator, workers; not NATS or Ray)
spend in each measured run are recorded beside the wall times: that is where a span's cost is
paid. Per mode, the best wall time and best rate over all rounds; overhead = traced time /
untraced time - 1 (for the rate, untraced rate / traced rate - 1), so positive is slower.

Target (the tracing issue): the traced text pipeline at most 3% slower than untraced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import service as service_bench  # noqa: E402
import text_quality  # noqa: E402

from gristmill.client import ServiceClient  # noqa: E402
from gristmill.embedded import EmbeddedService  # noqa: E402
from gristmill.errors import GristmillError  # noqa: E402
from gristmill.executors.service import ServiceExecutor  # noqa: E402
from gristmill.telemetry.spanstore import read_spans  # noqa: E402
from gristmill.telemetry.tracing import EXPORT_DELAY_MS  # noqa: E402

# The children's environment per mode; the OTLP endpoints are blanked so that a traced run
# exports to the span store only, whatever the caller's environment holds.
MODES: dict[str, dict[str, str]] = {
    "untraced": {"GRISTMILL_TRACING": "0"},
    "traced": {
        "GRISTMILL_TRACING": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
    },
}
SERVICES = ("planner", "coordinator")  # and every worker


class ServiceCpu:
    """CPU seconds (user + system) the service's own processes spent inside a block."""

    def __init__(self, service: EmbeddedService):
        names = [n for n in service.processes if n in SERVICES or n.startswith(("cpu-", "gpu-"))]
        self._procs = [psutil.Process(service.processes[n].pid) for n in names]
        self.seconds = 0.0

    def _total(self) -> float:
        total = 0.0
        for proc in self._procs:
            times = proc.cpu_times()
            total += times.user + times.system
        return total

    def __enter__(self) -> ServiceCpu:
        self._start = self._total()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self._total() - self._start


def text_runs(service: EmbeddedService, corpus: Path, out: Path) -> dict[str, Any]:
    """One warm-up run of the text pipeline, then two timed; the best, and the jobs' ids.
    All three write to one directory: the writer's path is part of its step, and a step with
    a new path starts new actors."""
    jobs = []
    executor = ServiceExecutor(service.url)
    service_bench._timed(service_bench._text_pipeline(corpus, out), executor)
    jobs.append(executor.job)
    runs = []
    for _ in range(2):
        executor = ServiceExecutor(service.url)
        with ServiceCpu(service) as cpu:
            wall = service_bench._timed(service_bench._text_pipeline(corpus, out), executor)
        jobs.append(executor.job)
        runs.append({"wall_s": wall, "service_cpu_s": cpu.seconds})
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "walls_s": [r["wall_s"] for r in runs], "jobs": jobs}


def dispatch_runs(service: EmbeddedService, tasks: int) -> dict[str, Any]:
    """The fan-out once cold, then twice warm; the best warm run."""
    cold = asyncio.run(service_bench.dispatch(service, tasks))
    runs = []
    for _ in range(2):
        with ServiceCpu(service) as cpu:
            run = asyncio.run(service_bench.dispatch(service, tasks))
        runs.append({**run, "service_cpu_us_per_task": 1e6 * cpu.seconds / run["tasks"]})
    best = max(runs, key=lambda r: r["per_s_noop_step"])
    return {
        **best,
        "rates_per_s": [r["per_s_noop_step"] for r in runs],
        "cold_per_s": cold["per_s_noop_step"],
    }


async def stored_spans(url: str, text_job: str, traced: bool) -> dict[str, Any]:
    """The spans the span store holds: per job, and `ServiceClient.trace`'s for `text_job`.
    Waits for the exporters' batches (until the count stops changing, when traced)."""
    client = await ServiceClient.connect(url)
    try:
        await asyncio.sleep(3 * EXPORT_DELAY_MS / 1000)
        counts = Counter(
            s["attributes"].get("gm.job") for s in await read_spans(client.js, client.team)
        )
        deadline = time.monotonic() + 30
        while traced and time.monotonic() < deadline:
            await asyncio.sleep(2 * EXPORT_DELAY_MS / 1000)
            again = Counter(
                s["attributes"].get("gm.job") for s in await read_spans(client.js, client.team)
            )
            if again == counts:
                break
            counts = again
        try:
            text = len((await client.trace(text_job))["spans"])
        except GristmillError:  # no spans stored for the job
            text = 0
        return {
            "total": sum(counts.values()),
            "jobs": len(counts),
            "text_job": text,
            "per_job": sorted(counts.values()),
        }
    finally:
        await client.close()


def one_round(mode: str, args: argparse.Namespace, corpus: Path) -> dict[str, Any]:
    """Start a service in `mode`, run the text pipeline and the dispatch runs, stop it."""
    cache = text_quality.CACHE
    state = cache / "tracing-state"
    shutil.rmtree(state, ignore_errors=True)
    started = time.perf_counter()
    with EmbeddedService(
        state,
        workers=2,
        slots=1,
        output_root=str(cache),
        input_roots=(str(cache),),
        child_env=MODES[mode],
    ) as service:
        result: dict[str, Any] = {"mode": mode, "start_s": time.perf_counter() - started}
        result["text"] = text_runs(service, corpus, cache / "tracing-out")
        result["dispatch"] = dispatch_runs(service, args.noop_tasks)
        result["spans"] = asyncio.run(
            stored_spans(service.url, result["text"]["jobs"][-1], mode == "traced")
        )
    _check_spans(mode, result["spans"])
    return result


def _check_spans(mode: str, spans: dict[str, Any]) -> None:
    if mode == "untraced" and spans["total"]:
        raise RuntimeError(f"the untraced service stored {spans['total']} spans")
    # 3 text jobs and 3 dispatch jobs ran
    if mode == "traced" and (not spans["text_job"] or spans["jobs"] < 6):
        raise RuntimeError(f"the traced service stored too few spans: {spans}")


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode, the best text wall and warm dispatch rate over its rounds; the overheads."""
    out: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        text = min((r["text"] for r in mine), key=lambda t: t["wall_s"])
        rate = max((r["dispatch"] for r in mine), key=lambda d: d["per_s_noop_step"])
        out[mode] = {
            "text_s": text["wall_s"],
            "text_s_all": [w for r in mine for w in r["text"]["walls_s"]],
            "text_service_cpu_s": text["service_cpu_s"],
            "dispatch_per_s": rate["per_s_noop_step"],
            "dispatch_per_s_all": [x for r in mine for x in r["dispatch"]["rates_per_s"]],
            "dispatch_service_cpu_us_per_task": rate["service_cpu_us_per_task"],
            "dispatch_end_to_end_per_s": rate["per_s_end_to_end"],
            "spans_stored": [r["spans"]["total"] for r in mine],
            "text_job_spans": [r["spans"]["text_job"] for r in mine],
        }
    untraced, traced = out["untraced"], out["traced"]
    out["overhead"] = {
        "text": traced["text_s"] / untraced["text_s"] - 1,
        "text_service_cpu": traced["text_service_cpu_s"] / untraced["text_service_cpu_s"] - 1,
        "dispatch": untraced["dispatch_per_s"] / traced["dispatch_per_s"] - 1,
        "dispatch_us_per_task": 1e6 / traced["dispatch_per_s"] - 1e6 / untraced["dispatch_per_s"],
        "dispatch_service_cpu_us_per_task": traced["dispatch_service_cpu_us_per_task"]
        - untraced["dispatch_service_cpu_us_per_task"],
    }
    # the same, from each round's pair alone: how much the figure moves from round to round
    pairs = zip(rounds[0::2], rounds[1::2], strict=False)
    out["overhead"]["text_by_round"] = [
        t["text"]["wall_s"] / u["text"]["wall_s"] - 1 for u, t in pairs
    ]
    pairs = zip(rounds[0::2], rounds[1::2], strict=False)
    out["overhead"]["dispatch_by_round"] = [
        u["dispatch"]["per_s_noop_step"] / t["dispatch"]["per_s_noop_step"] - 1 for u, t in pairs
    ]
    return out


def _table(result: dict[str, Any]) -> str:
    untraced, traced, overhead = result["untraced"], result["traced"], result["overhead"]
    rows = [
        ("measure", "untraced", "traced", "overhead"),
        (
            "text pipeline wall, best",
            f"{untraced['text_s']:.2f} s",
            f"{traced['text_s']:.2f} s",
            f"{overhead['text']:+.1%}",
        ),
        (
            "  service CPU in that run",
            f"{untraced['text_service_cpu_s']:.2f} s",
            f"{traced['text_service_cpu_s']:.2f} s",
            f"{overhead['text_service_cpu']:+.1%}",
        ),
        (
            "dispatch, warm, best (manifests/s)",
            f"{untraced['dispatch_per_s']:,.0f}/s",
            f"{traced['dispatch_per_s']:,.0f}/s",
            f"{overhead['dispatch']:+.1%}",
        ),
        (
            "  service CPU per task in that run",
            f"{untraced['dispatch_service_cpu_us_per_task']:.0f} µs",
            f"{traced['dispatch_service_cpu_us_per_task']:.0f} µs",
            f"{overhead['dispatch_service_cpu_us_per_task']:+.0f} µs",
        ),
        (
            "spans stored (per round)",
            ", ".join(str(n) for n in untraced["spans_stored"]),
            ", ".join(str(n) for n in traced["spans_stored"]),
            "",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--noop-tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of (untraced, traced)")
    args = parser.parse_args()

    corpus = text_quality.generate(args.docs, args.files)
    rounds = []
    for _ in range(args.rounds):
        for mode in MODES:
            rounds.append(one_round(mode, args, corpus))
            print(json.dumps(rounds[-1]), flush=True)
    result = summary(rounds)
    print(_table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
