"""The planner as a FastStream application (`python -m services.planner`)."""

from __future__ import annotations

from gristmill.bus.broker import ServiceApp
from gristmill.config import ServiceSettings
from services.planner.service import PlannerService

__all__ = ["create_app"]


def create_app(settings: ServiceSettings) -> ServiceApp:
    """A FastStream app serving the planner's API for `settings.teams`."""
    service = PlannerService(settings)
    app = ServiceApp(service.broker, settings.health_port, settings.health_host)
    app.after_startup(service.after_start)
    app.on_shutdown(service.before_stop)
    return app
