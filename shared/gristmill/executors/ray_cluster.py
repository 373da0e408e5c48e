"""The Ray cluster gristmill's Ray executors run on: reused, connected to, or started here.

`ray_session()` gives the executors a Ray connection for the duration of a run:

- inside an already initialised Ray (this process called `ray.init`, or an enclosing
  `ray_session()`), it reuses it and stops nothing;
- with `RAY_ADDRESS` set, it connects to that cluster and only disconnects afterwards;
- otherwise it starts a local head (all CPUs and GPUs it detects, the dashboard only when asked
  for, its files under the state directory, the driver's import paths given to the workers)
  and stops it afterwards.

Wrap several runs in one `with ray_session():` to pay Ray's start-up once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gristmill.config import state_dir
from gristmill.errors import GristmillError

__all__ = ["RaySession", "original_error", "ray_session", "state_dir"]

log = logging.getLogger(__name__)

# xenna lists actors through Ray's state API; these raise its result limits (as xenna does).
_STATE_API_LIMITS = {
    "RAY_MAX_LIMIT_FROM_API_SERVER": "40000",
    "RAY_MAX_LIMIT_FROM_DATA_SOURCE": "40000",
}
# Ray keeps Unix sockets under its temp dir, as
# <temp>/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store (up to 65 bytes after <temp>),
# and a socket path must fit in 107 bytes on Linux.
_MAX_TEMP_DIR = 107 - 65


@dataclass
class RaySession:
    """The Ray connection in use: its GCS address, whether this process started the cluster,
    whether the dashboard (and so the state API) runs, and how long start-up took."""

    address: str
    started_here: bool
    dashboard: bool
    start_seconds: float
    stop_seconds: float = 0.0


_current: RaySession | None = None


def _temp_dir(under: Path | None = None) -> str:
    """Ray's files under the state directory, or, where that path is too long for Ray's
    sockets, under a short directory of the system's temp dir named after the state
    directory (one per service, so two services never share one)."""
    preferred = (under or state_dir()).resolve() / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        return str(preferred)
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"gm-ray-{os.getuid()}-{digest}"
    if len(str(short)) <= _MAX_TEMP_DIR:
        return str(short)
    return str(Path("/tmp") / f"gm-ray-{os.getuid()}-{digest}")


def _driver_paths() -> str:
    """The driver's own import paths (not the interpreter's), for the workers of a local
    cluster: stages and tasks defined in modules next to a script import there too."""
    inside = (sys.prefix, sys.base_prefix)
    paths = [p for p in sys.path if p and Path(p).is_dir() and not p.startswith(inside)]
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*paths, existing] if existing else paths)


@contextlib.contextmanager
def ray_session(dashboard: bool = False, state: Path | None = None) -> Iterator[RaySession]:
    """A Ray connection for the block (see the module docstring). `dashboard=True` makes sure
    the dashboard runs when a cluster is started here (cosmos-xenna needs its state API); a
    cluster started here keeps its files under `state` (default: the state directory)."""
    global _current
    import ray

    if _current is not None and ray.is_initialized():
        if dashboard and not _current.dashboard:
            raise RuntimeError(
                "this Ray session was started without the dashboard, which cosmos-xenna needs; "
                "open the outer ray_session(dashboard=True)"
            )
        yield _current
        return
    if ray.is_initialized():  # the user's own ray.init: theirs to stop
        context = ray.get_runtime_context()
        yield RaySession(
            context.gcs_address, started_here=False, dashboard=dashboard, start_seconds=0.0
        )
        return
    for key, value in _STATE_API_LIMITS.items():
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        session = RaySession(address, started_here=False, dashboard=True, start_seconds=0.0)
    else:
        temp_dir = _temp_dir(state)
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        # The cluster's processes inherit this environment (cheaper than a runtime_env).
        python_path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = _driver_paths()
        try:
            started_context = ray.init(
                include_dashboard=dashboard,
                _temp_dir=temp_dir,
                log_to_driver=False,
                configure_logging=False,
            )
        finally:
            if python_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = python_path
        session = RaySession(
            started_context.address_info["gcs_address"],  # type: ignore[attr-defined]
            started_here=True,
            dashboard=dashboard,
            start_seconds=0.0,
        )
    session.start_seconds = time.perf_counter() - started
    log.info(
        "Ray at %s (started here: %s) in %.1f s",
        session.address,
        session.started_here,
        session.start_seconds,
    )
    previous_address = os.environ.get("RAY_ADDRESS")
    # Libraries that look a cluster up themselves (xenna's state API) must find this one, not
    # another Ray running on the same machine.
    os.environ["RAY_ADDRESS"] = session.address
    _current = session
    try:
        yield session
    finally:
        _current = None
        stopping = time.perf_counter()
        ray.shutdown()
        session.stop_seconds = time.perf_counter() - stopping
        if previous_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous_address


def original_error(exc: BaseException) -> BaseException:
    """The gristmill error (e.g. a stage's `StageError`) inside Ray's wrapping of a failure in a
    worker, or `exc` itself when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GristmillError):
            # RayTaskError(StageError) is a StageError subclass made by Ray; hand back the
            # worker's own error, which has the stage's message without Ray's decoration.
            cause = getattr(current, "cause", None)
            found = cause if isinstance(cause, GristmillError) else current
            # Ray Data appends advice about retries to the message; gristmill's own messages
            # are one line, so keep that line.
            if found.args and isinstance(found.args[0], str):
                found.args = (found.args[0].split("\n", 1)[0], *found.args[1:])
            return found
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return exc
