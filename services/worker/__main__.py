"""`python -m services.worker --pool cpu|gpu [--slots N]`: run one worker until SIGINT/SIGTERM.

It connects to the Ray cluster at `RAY_ADDRESS` (the one `gristmill up` starts), or starts a
local one for itself.
"""

from __future__ import annotations

import argparse
import asyncio

from gristmill.config import ServiceSettings
from gristmill.executors.ray_cluster import ray_session
from gristmill.telemetry import configure_logging
from services.worker.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.worker")
    parser.add_argument("--pool", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--slots", type=int, default=1, help="tasks run at once (default 1)")
    parser.add_argument("--id", default="", help="worker id (default: pool-host-pid)")
    parser.add_argument("--nats-url", help="NATS server (default: GRISTMILL_NATS_URL)")
    args = parser.parse_args()
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    configure_logging()
    settings = ServiceSettings.from_env(args.nats_url)
    with ray_session():
        asyncio.run(create_app(settings, args.pool, args.slots, args.id).run())


if __name__ == "__main__":
    main()
