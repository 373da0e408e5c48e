"""The worker as a FastStream application (`python -m services.worker`)."""

from __future__ import annotations

from faststream import FastStream

from gristmill.config import ServiceSettings
from services.worker.service import WorkerService

__all__ = ["create_app"]


def create_app(
    settings: ServiceSettings, pool: str = "cpu", slots: int = 1, worker_id: str = ""
) -> FastStream:
    """A FastStream app running one worker (Ray must be initialised by the caller)."""
    service = WorkerService(settings, pool=pool, slots=slots, worker_id=worker_id)
    app = FastStream(service.broker)
    app.after_startup(service.after_start)
    app.on_shutdown(service.before_stop)
    return app
