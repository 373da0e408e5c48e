"""Which step actors a worker keeps: one pool of idle actors per (team, pipeline, step), each
actor timed on its own. Plain bookkeeping, no Ray: the worker starts and stops the actors.

An actor is taken out of its pool for a call and given back after it, so a busy actor is never
in a pool and can never be stopped as idle; an idle actor is stopped after `idle_s` without a
call, or, when no assigned step needs it and a new actor is about to start, to make room for
that one (`make_room`: least recently used first, as far as the worker's bound on actors asks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ActorKey", "ActorPool"]

ActorKey = tuple[str, str, int]  # team, pipeline fingerprint, step


@dataclass
class _Idle:
    actor: Any
    since: float


@dataclass
class ActorPool:
    """Idle actors per key, and how many of each key are out on a call."""

    idle_s: float
    _idle: dict[ActorKey, list[_Idle]] = field(default_factory=dict)
    _busy: dict[ActorKey, int] = field(default_factory=dict)

    def take(self, key: ActorKey) -> Any | None:
        """An idle actor of `key` (now busy), or None: the caller starts one and calls
        `started`."""
        idle = self._idle.get(key)
        if not idle:
            return None
        entry = idle.pop()
        if not idle:
            del self._idle[key]
        self._busy[key] = self._busy.get(key, 0) + 1
        return entry.actor

    def started(self, key: ActorKey) -> None:
        """A new actor of `key` is out on its first call."""
        self._busy[key] = self._busy.get(key, 0) + 1

    def give_back(self, key: ActorKey, actor: Any, now: float) -> None:
        """An actor's call ended and the actor is fine: it is idle from `now`."""
        self._done(key)
        self._idle.setdefault(key, []).append(_Idle(actor, now))

    def lost(self, key: ActorKey) -> None:
        """An actor's call ended and the actor is gone (it died, or was stopped)."""
        self._done(key)

    def _done(self, key: ActorKey) -> None:
        left = self._busy.get(key, 0) - 1
        if left > 0:
            self._busy[key] = left
        else:
            self._busy.pop(key, None)

    def expired(self, now: float) -> list[Any]:
        """Remove and return the actors idle for longer than `idle_s`."""
        gone: list[Any] = []
        for key in list(self._idle):
            keep = [e for e in self._idle[key] if now - e.since <= self.idle_s]
            gone += [e.actor for e in self._idle[key] if now - e.since > self.idle_s]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return gone

    def make_room(self, wanted: set[ActorKey], keep: int | None) -> list[Any]:
        """Remove and return idle actors of keys not in `wanted`, least recently used first,
        until one more actor makes no more than `keep` in all (busy and idle); with `keep`
        None, every such actor."""
        unwanted = sorted(
            (
                (entry.since, key, entry)
                for key in self._idle
                if key not in wanted
                for entry in self._idle[key]
            ),
            key=lambda item: item[0],
        )
        excess = len(unwanted) if keep is None else self.busy() + self.idle_count() + 1 - keep
        gone: list[Any] = []
        for _, key, entry in unwanted[: max(0, excess)]:
            self._idle[key].remove(entry)
            if not self._idle[key]:
                del self._idle[key]
            gone.append(entry.actor)
        return gone

    def idle_actors(self) -> list[Any]:
        """Every actor waiting for a call."""
        return [entry.actor for entries in self._idle.values() for entry in entries]

    def busy(self, key: ActorKey | None = None) -> int:
        """Actors out on a call (of `key`, or of every key)."""
        return self._busy.get(key, 0) if key else sum(self._busy.values())

    def idle_count(self) -> int:
        """Actors waiting for a call."""
        return sum(len(v) for v in self._idle.values())
