"""The invariant every fault run must keep, and the means to check it.

For a job over a known corpus, after any faults: every input document is in exactly one of the
written output, the written drop records, or a dead-lettered task (kept + dropped +
dead-lettered = input, no document twice); every output document equals, byte for byte, what
`LocalExecutor` writes for it; the job's counts agree with the files. The injected faults are
counted from the lines `gristmill.faults` writes into the services' logs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.bus import JobState
from gristmill.client import ServiceClient
from gristmill.tasks import DocumentBatch, FileGroupTask

__all__ = ["Outcome", "Written", "check", "injected_faults", "make_corpus", "read_written"]

WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs"),
    *("while", "seven", "bright", "owls", "watch", "silently"),
]


def make_corpus(directory: Path, files: int, docs: int, seed: int) -> list[str]:
    """`files` JSONL files of `docs` documents each, a fifth of them too short for the suite's
    word-count filter; returns every document id."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    ids = []
    for part in range(files):
        lines = []
        for n in range(docs):
            doc_id = f"f{part:03d}-d{n:04d}"
            length = rng.randint(1, 3) if rng.random() < 0.2 else rng.randint(4, 40)
            text = " ".join(rng.choice(WORDS) for _ in range(length))
            lines.append(json.dumps({"id": doc_id, "text": text}) + "\n")
            ids.append(doc_id)
        (directory / f"part-{part:03d}.jsonl").write_text("".join(lines))
    return ids


@dataclass
class Written:
    """What a run left on disk: output documents (id -> hash of the line) and dropped ids."""

    documents: dict[str, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def read_written(out: Path, drops: Path) -> Written:
    """Read the output and drop-record files, noting any document that appears twice."""
    written = Written()
    for path in sorted(out.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            doc_id = json.loads(line)["id"]
            if doc_id in written.documents:
                written.problems.append(f"document {doc_id} written twice ({path.name})")
            written.documents[doc_id] = hashlib.sha256(line.encode()).hexdigest()
    for path in sorted(drops.glob("*.jsonl")) if drops.exists() else []:
        for line in path.read_text().splitlines():
            doc_id = json.loads(line)["id"]
            if doc_id in written.dropped:
                written.problems.append(f"document {doc_id} dropped twice ({path.name})")
            written.dropped.add(doc_id)
    return written


async def dead_lettered(client: ServiceClient, job: str) -> set[str]:
    """The documents of the job's dead-lettered tasks that never succeeded since."""
    done = await client.results(job)
    store = await client.store()
    ids: set[str] = set()
    for letter in await client.dead_letters(job):
        manifest = letter.manifest
        if manifest is None:
            continue
        [entry] = manifest.tasks
        if (manifest.step, entry.task_id) in done:
            continue  # it succeeded after all (a late success, or a retry)
        for ref in entry.inputs:
            task = store.get(ref, client.team)
            if isinstance(task, FileGroupTask):
                for path in task.data:
                    ids |= {json.loads(line)["id"] for line in Path(path).read_text().splitlines()}
            elif isinstance(task, DocumentBatch):
                ids |= set(task.to_pyarrow()["id"].to_pylist())
    return ids


@dataclass
class Outcome:
    """One fault run: what it injected and what the checker found."""

    scenario: str
    seed: int
    faults: dict[str, int]
    problems: list[str]
    documents: int
    dead_lettered: int
    state: dict[str, Any]

    @property
    def injected(self) -> int:
        """All faults injected in the run."""
        return sum(self.faults.values())


def check(
    inputs: list[str],
    reference: dict[str, str],
    written: Written,
    dead: set[str],
    state: JobState,
) -> list[str]:
    """Every way the run broke the invariant (empty: it held)."""
    problems = list(written.problems)
    out, dropped = set(written.documents), written.dropped
    for name, first, second in (
        ("written", out, dropped),
        ("written", out, dead),
        ("dropped", dropped, dead),
    ):
        both = first & second
        if both:
            other = "dropped" if second is dropped else "dead-lettered"
            problems.append(
                f"{len(both)} documents both {name} and {other}, e.g. {sorted(both)[:3]}"
            )
    accounted = out | dropped | dead
    missing = set(inputs) - accounted
    if missing:
        problems.append(f"{len(missing)} documents lost, e.g. {sorted(missing)[:5]}")
    extra = accounted - set(inputs)
    if extra:
        problems.append(f"{len(extra)} documents that were never input, e.g. {sorted(extra)[:5]}")
    differing = [d for d in out if reference.get(d) != written.documents[d]]
    if differing:
        problems.append(
            f"{len(differing)} documents differ from LocalExecutor's, e.g. {differing[:3]}"
        )
    expected_out = set(reference) - dead
    if out != expected_out:
        problems.append(
            f"written {len(out)} documents, LocalExecutor {len(expected_out)} (less the dead-lettered)"
        )
    if state.items_out != len(out):
        problems.append(f"the job counts {state.items_out} documents out, the files {len(out)}")
    if state.items_dropped != len(dropped):
        problems.append(
            f"the job counts {state.items_dropped} dropped, the drop records {len(dropped)}"
        )
    return problems


def injected_faults(state_dir: Path) -> dict[str, int]:
    """Faults the service's processes say they injected, by kind."""
    counts: collections.Counter[str] = collections.Counter()
    log = state_dir / "logs" / "faults.log"  # every process of the service, actors included
    for line in log.read_text().splitlines() if log.exists() else []:
        counts[line.split()[1]] += 1
    return dict(counts)
