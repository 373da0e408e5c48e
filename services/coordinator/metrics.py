"""`GET /metrics`: the coordinator's view of every job, in the Prometheus text format.

Built at each scrape from what the coordinator knows (no counters to keep in step with it), so
the numbers are exactly the ones `gristmill status` shows. Every series of a job is labelled
`team`, `job` and, per step, `step` and `step_name`.

Series (labels in brackets; docs/observability.md has the table):
`gristmill_jobs` [state], `gristmill_step_tasks` [state: published, pending, done, failed],
`gristmill_step_documents_total` [kind: in, out, dropped], `gristmill_step_dropped_documents_total`
[stage], `gristmill_step_throughput_documents_per_second`, `gristmill_consumer_backlog_messages`
[kind: pending, ack_pending], `gristmill_dead_letters`, `gristmill_workers` [pool],
`gristmill_worker_slots` [pool]; and, for the whole service, `gristmill_desired_workers` [pool]
(the last scaling decision: what KEDA or an HPA scales a worker Deployment on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gristmill.bus import JobState, WorkerState
from services.coordinator.api import Backlog

__all__ = ["TeamSnapshot", "render"]

JOB_STATES = ("pending", "running", "completed", "completed_with_failures", "failed")


@dataclass(frozen=True)
class TeamSnapshot:
    """What one team's series are made of, taken at one scrape."""

    team: str
    jobs: list[JobState]
    backlog: dict[str, list[Backlog]]
    throughput: dict[str, list[float]]
    workers: list[WorkerState]


class _Snapshots(Collector):
    def __init__(self, snapshots: list[TeamSnapshot], desired: dict[str, int]):
        self.snapshots = snapshots
        self.desired = desired

    def collect(self) -> Iterator[Metric]:
        step_labels = ["team", "job", "step", "step_name"]
        jobs = GaugeMetricFamily("gristmill_jobs", "Jobs by state.", labels=["team", "state"])
        tasks = GaugeMetricFamily(
            "gristmill_step_tasks", "Tasks of a step by state.", labels=[*step_labels, "state"]
        )
        documents = CounterMetricFamily(
            "gristmill_step_documents",
            "Documents into, out of, dropped by a step.",
            labels=[*step_labels, "kind"],
        )
        dropped = CounterMetricFamily(
            "gristmill_step_dropped_documents",
            "Documents dropped, per stage (filter).",
            labels=[*step_labels, "stage"],
        )
        speed = GaugeMetricFamily(
            "gristmill_step_throughput_documents_per_second",
            "Documents into the step per second over the last 10 s.",
            labels=step_labels,
        )
        backlog = GaugeMetricFamily(
            "gristmill_consumer_backlog_messages",
            "Messages of a step's consumer not yet delivered (pending) or not yet acknowledged "
            "(ack_pending).",
            labels=[*step_labels, "kind"],
        )
        letters = GaugeMetricFamily(
            "gristmill_dead_letters", "Tasks dead-lettered.", labels=["team", "job"]
        )
        workers = GaugeMetricFamily("gristmill_workers", "Live workers.", labels=["team", "pool"])
        slots = GaugeMetricFamily(
            "gristmill_worker_slots", "Slots of the live workers.", labels=["team", "pool"]
        )
        for snap in self.snapshots:
            team = snap.team
            for state in JOB_STATES:
                jobs.add_metric([team, state], sum(j.state == state for j in snap.jobs))
            for job in snap.jobs:
                letters.add_metric([team, job.job], job.tasks_failed)
                rates = snap.throughput.get(job.job, [])
                for index, step in enumerate(job.steps):
                    labels = [team, job.job, str(index), step.name]
                    pending = max(0, step.published - step.done - step.failed)
                    for state, value in (
                        ("published", step.published),
                        ("pending", pending),
                        ("done", step.done),
                        ("failed", step.failed),
                    ):
                        tasks.add_metric([*labels, state], value)
                    for kind, value in (
                        ("in", step.items_in),
                        ("out", step.items_out),
                        ("dropped", step.items_dropped),
                    ):
                        documents.add_metric([*labels, kind], value)
                    for stage, value in step.dropped_by.items():
                        dropped.add_metric([*labels, stage], value)
                    if index < len(rates):
                        speed.add_metric(labels, rates[index])
                for b in snap.backlog.get(job.job, []):
                    labels = [team, job.job, str(b.step), b.name]
                    backlog.add_metric([*labels, "pending"], b.pending)
                    backlog.add_metric([*labels, "ack_pending"], b.ack_pending)
            for pool in sorted({w.pool for w in snap.workers} | {"cpu"}):
                mine = [w for w in snap.workers if w.pool == pool]
                workers.add_metric([team, pool], len(mine))
                slots.add_metric([team, pool], sum(w.slots for w in mine))
        wanted = GaugeMetricFamily(
            "gristmill_desired_workers",
            "Workers the last scaling decision wants per pool.",
            labels=["pool"],
        )
        for pool, count in sorted(self.desired.items()):
            wanted.add_metric([pool], count)
        yield from (jobs, tasks, documents, dropped, speed, backlog, letters, workers, slots)
        yield wanted


def render(snapshots: list[TeamSnapshot], desired: dict[str, int] | None = None) -> bytes:
    """The exposition of these snapshots and of the desired workers per pool
    (`text/plain; version=0.0.4`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshots(snapshots, desired or {}))
    data: Any = generate_latest(registry)
    return bytes(data)
