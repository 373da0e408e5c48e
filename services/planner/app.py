"""The planner as a FastStream application (`python -m services.planner`)."""

from __future__ import annotations

from faststream import FastStream

from gristmill.config import ServiceSettings
from services.planner.service import PlannerService

__all__ = ["create_app"]


def create_app(settings: ServiceSettings) -> FastStream:
    """A FastStream app serving the planner's API for `settings.teams`."""
    service = PlannerService(settings)
    app = FastStream(service.broker)
    app.after_startup(service.after_start)
    app.on_shutdown(service.before_stop)
    return app
