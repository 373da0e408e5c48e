"""The coordinator as a FastStream application (`python -m services.coordinator`)."""

from __future__ import annotations

from gristmill.bus.broker import ServiceApp
from gristmill.config import ServiceSettings
from services.coordinator.service import CoordinatorService

__all__ = ["create_app"]


def create_app(settings: ServiceSettings) -> ServiceApp:
    """A FastStream app running the coordinator for `settings.teams`."""
    service = CoordinatorService(settings)
    app = ServiceApp(service.broker, settings.health_port, settings.health_host)
    app.after_startup(service.after_start)
    app.on_shutdown(service.before_stop)
    return app
