"""`Startable`: what a local process group (a NATS server, a cluster of them, the embedded
service) has in common: `start()` returns it running, `stop()` ends it, and `with` does both."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Startable"]


class Startable:
    """A context manager over `start` and `stop`: `with Thing(...) as thing:` starts it, and
    stops it on the way out, however the block ends."""

    def start(self) -> Self:
        """Start, and return self."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop (a no-op when not running)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
