"""The local-process scaler: the embedded supervisor's side of autoscaling.

The coordinator decides (`services.coordinator.scaling`) and writes its decision to the
service's scaling bucket; the supervisor follows that key and starts or stops worker processes
to match it, within the bounds it was started with (`gristmill up --min-workers N --max-workers
M`). A worker to be removed is sent SIGTERM and drains (finishes the runs it has, hands back the
manifests it fetched and had not started) before it exits; the supervisor does not start it
again. `reconcile` is the pure part: which workers to start and which to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gristmill.bus import MessageError, ScalingDecision, SupervisedWorkers
from gristmill.bus.broker import nats_servers
from gristmill.bus.jobs import DECISION_KEY, PROCESSES_KEY, SCALING_BUCKET
from gristmill.credentials import Credentials

__all__ = ["DecisionFollower", "Reconciled", "reconcile"]

log = logging.getLogger("gristmill.supervisor")


@dataclass(frozen=True)
class Reconciled:
    """What the supervisor does about one decision: workers to start per pool, and the names of
    the workers to drain and stop."""

    start: dict[str, int]
    stop: tuple[str, ...]


def reconcile(
    running: Mapping[str, list[str]],
    decision: ScalingDecision,
    bounds: Mapping[str, tuple[int, int]],
) -> Reconciled:
    """For pools under autoscaling (`bounds`: pool -> (min, max)), the workers to start and to
    stop so that `running` (pool -> its workers not already stopping) matches `decision`. Only
    workers the decision names are stopped (it never names one still starting or setting up);
    the bounds hold whatever the decision says."""
    start: dict[str, int] = {}
    stop: list[str] = []
    for pool, (low, high) in sorted(bounds.items()):
        mine = running.get(pool, [])
        going = [w for w in decision.remove.get(pool, []) if w in mine]
        going = going[: max(0, len(mine) - low)]
        stop += going
        left = len(mine) - len(going)
        wanted = max(low, min(high, decision.workers.get(pool, left)))
        if wanted > left:
            start[pool] = wanted - left
    return Reconciled(start, tuple(stop))


class DecisionFollower:
    """Follows the coordinator's decision key in a thread of its own and calls `apply` with
    each decision (once per `seq`), until `stop`."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        apply: Callable[[ScalingDecision], None],
    ):
        self.url = url
        self.credentials = credentials
        self.apply = apply
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaling", daemon=True)
        self._seen: tuple[int, float] = (-1, 0.0)
        self._report: SupervisedWorkers | None = None  # to write, newest only
        self._report_lock = threading.Lock()

    def report(self, workers: SupervisedWorkers) -> None:
        """Write what the supervisor runs to the scaling bucket (soon, from the follower's
        thread), so the coordinator knows the workers still starting."""
        with self._report_lock:
            self._report = workers

    async def _write_report(self, kv: object) -> None:
        with self._report_lock:
            report, self._report = self._report, None
        if report is not None:
            try:
                await kv.put(PROCESSES_KEY, report.to_json())  # type: ignore[attr-defined]
            except Exception:
                self.report(report)  # tried again on the next round
                raise

    def start(self) -> DecisionFollower:
        """Start following."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following (within about a second)."""
        self._stopping.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                asyncio.run(self._follow())
            except Exception:  # NATS restarting, say: follow again
                log.exception("supervisor: following the scaling decisions failed; again")
            self._stopping.wait(1.0)

    async def _follow(self) -> None:
        import nats

        nc = await nats.connect(
            nats_servers(self.url), connect_timeout=5, **self.credentials.connect_options()
        )
        try:
            js = nc.jetstream()
            kv = None
            while kv is None and not self._stopping.is_set():
                try:
                    kv = await js.key_value(SCALING_BUCKET)
                except Exception:  # the coordinator has not made it yet
                    await asyncio.sleep(0.5)
            if kv is None:
                return
            watcher = await kv.watch(DECISION_KEY)
            while not self._stopping.is_set():
                await self._write_report(kv)
                try:
                    entry = await watcher.updates(timeout=0.5)  # type: ignore[no-untyped-call]
                except TimeoutError:  # nats' own is one too
                    continue
                if entry is None or not entry.value:
                    continue
                try:
                    decision = ScalingDecision.from_json(entry.value)
                except MessageError as exc:
                    log.error("supervisor: ignoring an unreadable scaling decision: %s", exc)
                    continue
                if (decision.seq, decision.at) != self._seen:  # a restarted coordinator
                    self._seen = (decision.seq, decision.at)  # counts from 1 again
                    self.apply(decision)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
