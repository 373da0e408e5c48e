"""`python -m services.planner [--nats-url URL]`: run the planner until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from gristmill.config import ServiceSettings
from services.planner.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.planner")
    parser.add_argument("--nats-url", help="NATS server (default: GRISTMILL_NATS_URL)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(create_app(ServiceSettings.from_env(args.nats_url)).run())


if __name__ == "__main__":
    main()
