"""The worker as a FastStream application (`python -m services.worker`)."""

from __future__ import annotations

from gristmill.bus.broker import ServiceApp
from gristmill.config import ServiceSettings
from services.worker.service import WorkerService

__all__ = ["create_app"]


def create_app(
    settings: ServiceSettings, pool: str = "cpu", slots: int = 1, worker_id: str = ""
) -> ServiceApp:
    """A FastStream app running one worker (Ray must be initialised by the caller)."""
    service = WorkerService(settings, pool=pool, slots=slots, worker_id=worker_id)
    app = ServiceApp(service.broker, settings.health_port, settings.health_host)
    app.after_startup(service.after_start)
    app.on_shutdown(service.before_stop)
    return app
