"""`python -m services.coordinator [--nats-url URL]`: run the coordinator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from gristmill.config import ServiceSettings
from gristmill.telemetry import configure_logging
from services.coordinator.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.coordinator")
    parser.add_argument("--nats-url", help="NATS server (default: GRISTMILL_NATS_URL)")
    args = parser.parse_args()
    configure_logging()
    asyncio.run(create_app(ServiceSettings.from_env(args.nats_url)).run())


if __name__ == "__main__":
    main()
