"""Fault injection for the chaos suite: named points in the service's code where a run may crash
the process, fail a store write half way, damage what a read returns, or publish a message twice.

Off (one dictionary lookup per point) unless `GRISTMILL_FAULTS` is set, e.g.

    GRISTMILL_FAULTS="seed=7,kill_at=20-400,kills=3,store_write=0.02,store_read=0.02,dup=0.05"

| key          | fault                                                                            |
| ------------ | -------------------------------------------------------------------------------- |
| `kill=P`     | SIGKILL this process at a crash point, with probability P per point visited      |
| `kill_at=A-B`| SIGKILL at the N-th point visited, N drawn from [A, B] for each incarnation       |
| `kills=K`    | only the first K incarnations of the process may be killed (default: no limit)   |
| `only=X`     | kill only at points whose name starts with X (e.g. `worker.`)                    |
| `once=PATH`  | kill only if the file PATH can be created (at most one kill, whatever restarts)  |
| `store_write=P` | a store write fails after writing half its bytes (nothing is published)       |
| `store_read=P`  | a store read returns damaged bytes (the checksum must catch it)               |
| `dup=P`      | a publish is sent a second time under another msg id (a duplicate the stream      |
|              | cannot drop: consumers must)                                                      |
| `no_progress=P` | a keep-alive (`in_progress`) is not sent: with a short ack wait, a manifest    |
|              | comes back to another worker while the first still runs (a redelivery storm)      |

Decisions come from a generator seeded with `seed`, the process's role (`GRISTMILL_ROLE`) and its
incarnation (`GRISTMILL_INCARNATION`, counted by the supervisor), so a failing run names what to
rerun. Every injected fault writes one line to stderr (the process's log), and to the file
`GRISTMILL_FAULT_LOG` when set: `gristmill-fault <kind> <point> seed=<seed> role=<role>
incarnation=<n>`.
"""

from __future__ import annotations

import os
import random
import signal
import sys

__all__ = [
    "ENVIRONMENT",
    "FaultPlan",
    "active",
    "damaged",
    "duplicate",
    "environment",
    "point",
    "progress_lost",
    "write_fails",
]


class FaultPlan:
    """What `GRISTMILL_FAULTS` asks for, and the generator deciding each visit."""

    def __init__(self, spec: str, role: str, incarnation: int):
        fields = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
        self.seed = fields.get("seed", "0")
        self.role = role
        self.incarnation = incarnation
        self.rng = random.Random(f"{self.seed}:{role}:{incarnation}")
        self.kill = float(fields.get("kill", 0))
        self.only = fields.get("only", "")
        kills = fields.get("kills")
        self.may_kill = kills is None or incarnation < int(kills)
        self.kill_at: int | None = None
        if "kill_at" in fields:
            low, _, high = fields["kill_at"].partition("-")
            self.kill_at = self.rng.randint(int(low), int(high or low))
        self.once = fields.get("once", "")
        self.visits = 0
        kinds = ("store_write", "store_read", "dup", "no_progress")
        self.rates = {k: float(fields.get(k, 0)) for k in kinds}

    def report(self, kind: str, where: str) -> None:
        """Say, in the log (and in `GRISTMILL_FAULT_LOG`, where every process of a service
        appends), that a fault is injected here."""
        line = (
            f"gristmill-fault {kind} {where} seed={self.seed} role={self.role} "
            f"incarnation={self.incarnation}\n"
        )
        sys.stderr.write(line)
        sys.stderr.flush()
        shared = os.environ.get("GRISTMILL_FAULT_LOG")
        if shared:
            with open(shared, "a") as log:
                log.write(line)

    def at_point(self, name: str) -> bool:
        """Whether to die at crash point `name`."""
        if not self.may_kill or not name.startswith(self.only):
            return False
        self.visits += 1
        hit = (self.kill_at is not None and self.visits == self.kill_at) or (
            self.kill > 0 and self.rng.random() < self.kill
        )
        return hit and self._first_kill()

    def _first_kill(self) -> bool:
        if not self.once:
            return True
        try:
            os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def roll(self, kind: str) -> bool:
        """Whether to inject a fault of `kind` now."""
        rate = self.rates[kind]
        return rate > 0 and self.rng.random() < rate


def _load() -> FaultPlan | None:
    spec = os.environ.get("GRISTMILL_FAULTS", "")
    if not spec:
        return None
    role = os.environ.get("GRISTMILL_ROLE", "process")
    return FaultPlan(spec, role, int(os.environ.get("GRISTMILL_INCARNATION", "0")))


_PLAN = _load()


# What decides this process's faults, for processes it starts (a worker's step actors).
ENVIRONMENT = ("GRISTMILL_FAULTS", "GRISTMILL_ROLE", "GRISTMILL_INCARNATION", "GRISTMILL_FAULT_LOG")


def environment() -> dict[str, str]:
    """The variables of `ENVIRONMENT` this process has, to hand on."""
    return {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}


def active() -> bool:
    """Whether any fault may be injected in this process."""
    return _PLAN is not None


def point(name: str) -> None:
    """A crash point: the process may be SIGKILLed here (nothing of it gets to clean up)."""
    if _PLAN is not None and _PLAN.at_point(name):
        _PLAN.report("kill", name)
        os.kill(os.getpid(), signal.SIGKILL)


def write_fails(where: str) -> bool:
    """Whether the store write at `where` is to fail half way."""
    if _PLAN is not None and _PLAN.roll("store_write"):
        _PLAN.report("store_write", where)
        return True
    return False


def damaged(payload: bytes, where: str) -> bytes:
    """`payload`, or a copy with one byte changed when a damaged read is to be injected."""
    if _PLAN is None or not payload or not _PLAN.roll("store_read"):
        return payload
    _PLAN.report("store_read", where)
    index = _PLAN.rng.randrange(len(payload))
    return payload[:index] + bytes([payload[index] ^ 0xFF]) + payload[index + 1 :]


def progress_lost(where: str) -> bool:
    """Whether the keep-alive at `where` is to be left out."""
    if _PLAN is not None and _PLAN.roll("no_progress"):
        _PLAN.report("no_progress", where)
        return True
    return False


def duplicate(where: str) -> bool:
    """Whether the publish at `where` is to be sent twice."""
    if _PLAN is not None and _PLAN.roll("dup"):
        _PLAN.report("dup", where)
        return True
    return False
