"""The service commands of the `gristmill` CLI: up, down, submit, status, dlq, gc, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gristmill.bus import ContinuousOptions, JobOptions, JobSpec, JobState
from gristmill.client import ServiceClient, new_request_id
from gristmill.config import SERVICE_FILE, ServiceSettings, nats_url, state_dir
from gristmill.errors import GristmillError
from gristmill.pipeline.spec import load_spec
from gristmill.teams import TeamsConfig

__all__ = ["add_commands", "describe_fate", "run_command"]

COMMANDS = (
    "up",
    "down",
    "submit",
    "status",
    "stop",
    "ingest",
    "workers",
    "dlq",
    "gc",
    "run",
    "trace",
)


def add_commands(commands: Any) -> None:
    """Add the service commands to the CLI's subparsers."""
    up = commands.add_parser(
        "up", help="start the embedded service (NATS, planner, coordinator, workers)"
    )
    _service_flags(up)
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    down = commands.add_parser("down", help="stop the embedded service `up` started")
    _state_flag(down)
    submit = commands.add_parser("submit", help="submit a pipeline spec to the service")
    _job_flags(submit)
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")
    submit.add_argument(
        "--continuous",
        action="store_true",
        help="run until `gristmill stop JOB`, taking each new input file once",
    )
    submit.add_argument(
        "--poll-s",
        type=float,
        default=5.0,
        metavar="S",
        help="a continuous job lists its input every S seconds (default 5)",
    )
    stop = commands.add_parser("stop", help="stop a continuous job taking new files")
    stop.add_argument("job")
    _client_flags(stop)
    ingest = commands.add_parser(
        "ingest", help="tell a continuous job that these files are complete and new"
    )
    ingest.add_argument("job")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    _client_flags(ingest)
    status = commands.add_parser("status", help="where jobs stand")
    status.add_argument("job", nargs="?", help="one job (default: all)")
    _client_flags(status)
    workers = commands.add_parser(
        "workers", help="each worker (pool, slots, steps, state) and the last scaling decisions"
    )
    workers.add_argument("--json", action="store_true", help="print the answer as JSON")
    _client_flags(workers)
    dlq = commands.add_parser("dlq", help="dead letters: tasks that failed their last attempt")
    dlq.add_argument("action", choices=("list", "show", "retry"))
    dlq.add_argument("job", nargs="?", help="only this job's (show/retry: required)")
    dlq.add_argument("--task", help="show/retry only this task")
    _client_flags(dlq)
    gc = commands.add_parser(
        "gc", help="archive finished jobs: collect their payloads, events and dead letters"
    )
    gc.add_argument(
        "--older-than",
        type=float,
        metavar="SECONDS",
        help="jobs finished longer ago than this (default: GRISTMILL_RETENTION_S, a day)",
    )
    _client_flags(gc)
    trace = commands.add_parser(
        "trace", help="a job's trace: every task attempt as a waterfall, critical path marked"
    )
    trace.add_argument("target", metavar="JOB|TASK", help="a job id, or a task id")
    trace.add_argument("--json", action="store_true", help="print the spans as JSON")
    _client_flags(trace)
    run = commands.add_parser("run", help="up (if needed) + submit --wait")
    _job_flags(run)
    _service_flags(run, with_state=False)
    run.add_argument("--keep-up", action="store_true", help="leave a service run started running")


def _state_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", help="the service's state (default: GRISTMILL_STATE_DIR or .gristmill)"
    )


def _client_flags(parser: argparse.ArgumentParser) -> None:
    _state_flag(parser)
    parser.add_argument(
        "--credentials",
        metavar="FILE",
        help="the team's credentials file (default: GRISTMILL_CREDENTIALS, else the only "
        "team's file under the state dir's credentials/)",
    )
    parser.add_argument("--team", help="the team (default: the one the credentials are of)")


def _service_flags(parser: argparse.ArgumentParser, with_state: bool = True) -> None:
    if with_state:
        _state_flag(parser)
    parser.add_argument("--workers", type=int, default=1, help="CPU workers (default 1)")
    parser.add_argument("--gpu-workers", type=int, default=0, help="GPU workers (default 0)")
    parser.add_argument("--slots", type=int, default=2, help="tasks each CPU worker runs at once")
    parser.add_argument(
        "--gpu-slots",
        type=int,
        default=1,
        help="actors each GPU worker runs at once (4 lets quarter-GPU steps share a GPU)",
    )
    scaling = parser.add_argument_group(
        "autoscaling", "bounds of a pool the coordinator scales by measured throughput"
    )
    for prefix, pool in (("", "CPU"), ("gpu-", "GPU")):
        scaling.add_argument(
            f"--{prefix}min-workers", type=int, help=f"fewest {pool} workers (0: scale to zero)"
        )
        scaling.add_argument(f"--{prefix}max-workers", type=int, help=f"most {pool} workers")
    parser.add_argument(
        "--registered-only", action="store_true", help="refuse jobs that bring their own code"
    )
    teams = parser.add_mutually_exclusive_group()
    teams.add_argument(
        "--teams", help="comma-separated teams to serve (default: GRISTMILL_TEAMS, else 'default')"
    )
    teams.add_argument(
        "--teams-file", help="YAML file of teams with weights, quotas and trusted_teams"
    )


def _job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="pipeline spec (YAML)")
    parser.add_argument(
        "--input", action="append", default=[], help="input file/dir/glob (repeatable)"
    )
    parser.add_argument("--output", help="where the last stage writes")
    parser.add_argument("--max-deliver", type=int, default=5, help="attempts per task (default 5)")
    _client_flags(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run one service command; returns the exit status."""
    if getattr(args, "state_dir", None):
        os.environ["GRISTMILL_STATE_DIR"] = str(Path(args.state_dir).resolve())
    if args.command == "up":
        return _up(args)
    if args.command == "down":
        return _down()
    if args.command == "run":
        return _run(args)
    return asyncio.run(_client_command(args))


# -- up / down ---------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    if _running() is not None:
        raise GristmillError(
            f"a service already runs with state dir {state_dir()} (`gristmill down` stops it)"
        )
    if args.detach:
        return _up_detached(args)
    from gristmill.embedded import EmbeddedService

    settings = ServiceSettings.from_env("nats://unused")  # the GRISTMILL_* limits and roots
    if args.teams_file:
        teams = TeamsConfig.load(args.teams_file)
    elif args.teams:
        teams = TeamsConfig.of_names([t.strip() for t in args.teams.split(",") if t.strip()])
    else:
        teams = settings.policies
    service = EmbeddedService(
        state_dir(),
        teams_config=teams,
        workers=args.workers,
        gpu_workers=args.gpu_workers,
        slots=args.slots,
        gpu_slots=args.gpu_slots,
        trust_code=not args.registered_only,
        output_root=settings.output_root,
        input_roots=settings.input_roots,
        stream_max_bytes=settings.stream_max_bytes,
        retention_s=settings.retention_s,
        idle_actor_s=settings.idle_actor_s,
        bounds=_bounds(args, settings),
        scale_down_after_s=settings.scale_down_after_s,
        scale_grace_s=settings.scale_grace_s,
        drain_s=settings.drain_s,
    )
    service.start()
    stop = _StopSignal()  # after start: starting Ray installs handlers of its own
    try:
        print(f"gristmill service up at {service.url} (state in {service.state_dir})")
        _say_credentials(service)
        print("Ctrl-C or `gristmill down` stops it", flush=True)
        stop.wait()
    finally:
        service.stop()
    print("gristmill service stopped")
    return 0


def _bounds(args: argparse.Namespace, settings: ServiceSettings) -> dict[str, tuple[int, int]]:
    """The pools to autoscale, from the flags (else `GRISTMILL_[GPU_]MIN/MAX_WORKERS`)."""
    bounds = {pool: (low, high) for pool, low, high in settings.pool_bounds}
    for pool, prefix in (("cpu", ""), ("gpu", "gpu_")):
        low, high = getattr(args, f"{prefix}min_workers"), getattr(args, f"{prefix}max_workers")
        flag = f"--{prefix.replace('_', '-')}"
        if low is None and high is None:
            continue
        if high is None:
            raise GristmillError(f"{flag}min-workers needs {flag}max-workers too")
        low = 0 if low is None and pool == "gpu" else 1 if low is None else low
        if not 0 <= low <= high:
            raise GristmillError(
                f"{flag}min-workers ({low}) must be between 0 and {flag}max-workers ({high})"
            )
        bounds[pool] = (low, high)
    return bounds


def _say_credentials(service: Any) -> None:
    from gristmill.credentials import read_credentials

    if len(service.teams) == 1:
        token = read_credentials(service.credentials()).http_token
        print(f"team {service.teams[0]}: credentials in {service.credentials()}")
        print(f"dashboard: {service.http_url}/#token={token}")
        return
    print(
        f"teams {', '.join(service.teams)}: credentials in {service.credentials_dir}/<team>.creds"
    )
    print(f"dashboard: {service.http_url}/#token=<the team's http_token>")


class _StopSignal:
    """SIGINT/SIGTERM end `wait()`."""

    def __init__(self) -> None:
        self._stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, *_: Any) -> None:
        self._stopped = True

    def wait(self) -> None:
        while not self._stopped:
            signal.pause()


def _up_detached(args: argparse.Namespace) -> int:
    state = state_dir()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "gristmill.cli",
        "up",
        "--workers",
        str(args.workers),
        "--gpu-workers",
        str(args.gpu_workers),
        "--slots",
        str(args.slots),
        "--gpu-slots",
        str(args.gpu_slots),
    ]
    if args.registered_only:
        command.append("--registered-only")
    for flag in ("min_workers", "max_workers", "gpu_min_workers", "gpu_max_workers"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.teams_file:
        command += ["--teams-file", str(Path(args.teams_file).resolve())]
    elif args.teams:
        command += ["--teams", args.teams]
    log_path = state / "logs" / "supervisor.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while True:
        found = _running()
        if found is not None and found.get("pid") == process.pid:
            print(f"gristmill service up at {found['nats_url']} (state in {state}, log {log_path})")
            print(f"credentials: {found.get('credentials')}")
            return 0
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise GristmillError(f"the service failed to start; {log_path} ends:\n{tail}")
        if time.monotonic() > deadline:
            process.terminate()
            raise GristmillError(f"the service did not start within 180 s; see {log_path}")
        time.sleep(0.1)  # waiting on another process's file: there is nothing to block on


def _running() -> dict[str, Any] | None:
    """The service record of a live supervisor under the state dir, else None."""
    path = state_dir() / SERVICE_FILE
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
        return None
    return record


def _down() -> int:
    record = _running()
    if record is None:
        print(f"no gristmill service runs with state dir {state_dir()}")
        return 0
    pid = int(record["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # `run` started it: reap it, or it lingers as a zombie
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("gristmill service stopped")
            return 0
        time.sleep(0.1)  # waiting for another process to exit
    raise GristmillError(f"the service (pid {pid}) did not stop within 60 s")


# -- submit / status / dlq / run ---------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    started = False
    if not os.environ.get("GRISTMILL_NATS_URL") and _running() is None:
        args.detach = True
        _up(args)
        started = not args.keep_up
    try:
        args.wait = True
        return asyncio.run(_client_command(args))
    finally:
        if started:
            _down()


def _spec_of(args: argparse.Namespace, team: str) -> JobSpec:
    pipeline = load_spec(args.spec).to_dict()
    continuous = getattr(args, "continuous", False)
    return JobSpec(
        team=team,
        request_id=new_request_id(),
        pipeline=pipeline,
        inputs=[_absolute(p) for p in args.input],
        output=_absolute(args.output) if args.output else None,
        options=JobOptions(max_deliver=args.max_deliver),
        continuous=ContinuousOptions(poll_s=args.poll_s) if continuous else None,
    )


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


async def _client_command(args: argparse.Namespace) -> int:
    client = await ServiceClient.connect(nats_url(), args.team, args.credentials)
    try:
        if args.command in ("submit", "run"):
            return await _submit(client, args)
        if args.command == "status":
            return await _status(client, args.job)
        if args.command == "stop":
            files = await client.stop(args.job)
            print(f"job {args.job} stopped: it took {files} files, and ends once they are done")
            return 0
        if args.command == "ingest":
            await client.notify(args.job, [_absolute(p) for p in args.paths])
            print(f"told job {args.job} of {len(args.paths)} files")
            return 0
        if args.command == "trace":
            return await _trace(client, args)
        if args.command == "workers":
            return await _workers(client, args.json)
        if args.command == "why":
            print(describe_fate(args.doc_id, await client.why(args.job, args.doc_id)))
            return 0
        if args.command == "gc":
            archived = await client.gc(args.older_than)
            print(f"archived {len(archived)} finished jobs" + "".join(f"\n  {j}" for j in archived))
            return 0
        return await _dlq(client, args)
    finally:
        await client.close()


async def _submit(client: ServiceClient, args: argparse.Namespace) -> int:
    spec = _spec_of(args, client.team)
    started = time.perf_counter()
    job = await client.submit(spec)
    print(f"job {job} submitted")
    if spec.continuous is not None:
        print(f"it runs until stopped: gristmill stop {job}; gristmill status {job} shows it")
    if not args.wait:
        return 0
    state = await _follow(client, job)
    wall = time.perf_counter() - started
    print(
        f"job {job} {state.state} in {wall:.1f} s: {state.items_in} documents in, "
        f"{state.items_out} out, {state.items_dropped} dropped; "
        f"{state.tasks_failed} failed tasks"
    )
    table = _drops_table(state)
    if table:
        print(table)
    if spec.output:
        print(f"output: {spec.output}")
    if state.tasks_failed:
        print(f"see them with: gristmill dlq list {job}")
    return 0 if state.state == "completed" else 1


async def _follow(client: ServiceClient, job: str) -> JobState:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), transient=False
    ) as progress:
        bars: dict[int, Any] = {}

        def show(state: JobState) -> None:
            for index, step in enumerate(state.steps):
                if step.published == 0 and index not in bars:
                    continue
                if index not in bars:
                    label = step.name if len(step.name) <= 40 else step.name[:37] + "..."
                    bars[index] = progress.add_task(f"step {index} {label}", total=step.published)
                progress.update(
                    bars[index], total=step.published, completed=step.done + step.failed
                )

        state = await client.wait(job, on_progress=show)
        show(state)
    return state


async def _status(client: ServiceClient, job: str | None) -> int:
    status = await client.service_status(job)
    for state in status.jobs:
        _print_state(state)
    if not status.jobs:
        print("no jobs")
    if job is None:
        if status.archived:
            print(f"({status.archived} archived jobs not shown)")
        print(f"workers: {len(status.workers)}")
        now = time.time()
        for worker in status.workers:
            steps = ", ".join(worker.steps) or "-"
            print(
                f"  {worker.worker}  {worker.pool}  {worker.running}/{worker.slots} slots busy  "
                f"steps {steps}  last heartbeat {now - worker.at:.1f} s ago"
            )
    return 0


def _drops_table(state: JobState) -> str:
    """Documents dropped per step and stage (filter), largest first."""
    rows = [
        (f"{index} {step.name if len(step.name) <= 40 else step.name[:37] + '...'}", stage, count)
        for index, step in enumerate(state.steps)
        for stage, count in sorted(step.dropped_by.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    if not rows:
        return ""
    widths = [max(len(r[0]) for r in [*rows, ("step", "", 0)]), max(len(r[1]) for r in rows)]
    widths[1] = max(widths[1], len("dropped by"))
    lines = [f"{'step':<{widths[0]}}  {'dropped by':<{widths[1]}}  documents"]
    lines += [f"{s:<{widths[0]}}  {f:<{widths[1]}}  {c:>9}" for s, f, c in rows]
    return "\n".join(lines)


def describe_fate(doc_id: str, fate: dict[str, Any]) -> str:
    """One line on what became of a document, from a drop record or the service's answer."""
    where = ""
    if "task" in fate:
        where = f" [step {fate.get('step')}, task {fate['task']}"
        where += f", trace {fate['trace_id']}]" if fate.get("trace_id") else "]"
    if fate.get("fate") == "kept":
        return f"{doc_id}: kept, in {fate.get('file')}{where}"
    detail = [f"score {json.dumps(fate['score'])}"] if "score" in fate else []
    if "threshold" in fate:
        detail.append(f"threshold {json.dumps(fate['threshold'])}")
    if "duplicate_of" in fate and not str(fate.get("reason", "")).endswith(fate["duplicate_of"]):
        detail.append(f"duplicate of {fate['duplicate_of']}")
    if fate.get("duplicate_source"):
        detail.append(f"kept from {fate['duplicate_source']}")
    extra = f" ({', '.join(detail)})" if detail else ""
    return f"{doc_id}: dropped by stage '{fate['stage']}': {fate['reason']}{extra}{where}"


def describe_files(files: Any, state: JobState) -> str:
    """A continuous job's files and documents in one line (`gristmill status`)."""
    latency = "-" if files.last_latency_s is None else f"{files.last_latency_s:.1f} s"
    line = (
        f"files {files.seen} seen, {files.done} done, {files.pending} pending, "
        f"{files.failed} failed"
        + (f", {files.waiting} still being written" if files.waiting else "")
        + f"; documents {state.items_in} in, {state.items_out} out, {state.items_dropped} "
        f"dropped; lag {files.lag_s:.1f} s; last file {latency}"
        + ("; stopped" if files.input_closed else "")
    )
    if files.changed:
        line += "\n  changed after they were taken (not processed again): " + ", ".join(
            files.changed
        )
    return line


async def _workers(client: ServiceClient, as_json: bool) -> int:
    answer = await client.workers()
    if as_json:
        print(json.dumps(answer, indent=2))
        return 0
    print(describe_workers(answer))
    return 0


def describe_workers(answer: dict[str, Any], decisions: int = 5) -> str:
    """`gristmill workers` as text: a line per worker, then the last decisions and reasons."""
    now = time.time()
    lines = [f"{'worker':<24} {'pool':<4} {'slots':>5} {'busy':>4}  {'state':<9} steps"]
    for w in answer.get("workers", []):
        state = w.get("status", "ready")
        if state == "ready" and w.get("setting_up"):
            state = "setting up"
        steps = ", ".join(w.get("steps", [])) or "-"
        lines.append(
            f"{w['worker']:<24} {w['pool']:<4} {w['slots']:>5} {w.get('running', 0):>4}  "
            f"{state:<9} {steps}"
        )
    if len(lines) == 1:
        lines.append("(no live workers)")
    bounds = answer.get("autoscaled") or {}
    if bounds:
        lines.append(
            "autoscaled: "
            + ", ".join(f"{pool} {low}..{high} workers" for pool, (low, high) in bounds.items())
        )
    else:
        lines.append("autoscaling: off (pools keep their size; `up --max-workers N` turns it on)")
    for decision in answer.get("decisions", [])[:decisions]:
        wanted = ", ".join(f"{pool} {n}" for pool, n in sorted(decision["workers"].items()))
        lines.append(f"decision {decision['seq']} ({now - decision['at']:.0f} s ago): {wanted}")
        slots = [f"{s['job']}/{s['step']}: {s['slots']}" for s in decision.get("slots", [])]
        if slots:
            lines.append(f"  slots  {', '.join(slots)}")
        lines += [f"  why    {reason}" for reason in decision.get("reasons", [])]
    return "\n".join(lines)


async def _trace(client: ServiceClient, args: argparse.Namespace) -> int:
    from gristmill.telemetry.view import waterfall

    document = await client.trace(args.target)
    print(json.dumps(document, indent=2) if args.json else waterfall(document))
    return 0


def _print_state(state: JobState) -> None:
    print(
        f"{state.job}  {state.pipeline or '-'}  {state.state}  tasks {state.tasks_done}/"
        f"{state.tasks_published} done, {state.tasks_failed} failed  documents "
        f"{state.items_out} out, {state.items_dropped} dropped  trace {state.trace_id}"
    )
    if state.error:
        print(f"  {state.error}")
    if state.files is not None:
        print("  " + describe_files(state.files, state))
    for index, step in enumerate(state.steps):
        print(
            f"  step {index} {step.name}: {step.done}/{step.published} done, {step.failed} failed"
        )


async def _dlq(client: ServiceClient, args: argparse.Namespace) -> int:
    if args.action in ("show", "retry") and not args.job:
        raise GristmillError(f"gristmill dlq {args.action} needs a job id")
    letters = await client.dead_letters(args.job)
    if args.task:
        letters = [one for one in letters if one.failure.task_id == args.task]
    if args.action == "list":
        for letter in letters:
            f = letter.failure
            error = f.error.splitlines()[0] if f.error else ""
            print(f"{f.job}  step {f.step}  task {f.task_id}  {f.attempts} attempts  {error}")
        if not letters:
            print("no dead letters")
    elif args.action == "show":
        for letter in letters:
            f = letter.failure
            name = letter.manifest.step_name if letter.manifest else f"unreadable, {letter.subject}"
            print(f"job {f.job} step {f.step} ({name}) task {f.task_id}")
            print(f"attempts: {f.attempts}, last on worker {f.worker or '?'}")
            print(f"error: {f.error}\n{f.traceback}")
    else:
        latest = {(one.failure.step, one.failure.task_id): one for one in letters}
        for letter in latest.values():
            await client.retry(letter)
            print(f"task {letter.failure.task_id} of job {letter.failure.job} published again")
    return 0
