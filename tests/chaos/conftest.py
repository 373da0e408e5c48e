"""The fault suite's summary: faults injected per scenario, and the runs' results, printed at the
end of the session and written to `$GRISTMILL_CHAOS_REPORT` (default `.gristmill-chaos.json`)."""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

# The fault suite reuses the service suite's stages (`service_stages`).
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from test_chaos import OUTCOMES

    if not OUTCOMES:
        return
    by_scenario: dict[str, dict[str, Any]] = {}
    for outcome in OUTCOMES:
        row = by_scenario.setdefault(
            outcome.scenario, {"runs": 0, "failed": 0, "faults": collections.Counter(), "seeds": []}
        )
        row["runs"] += 1
        row["failed"] += bool(outcome.problems)
        row["faults"].update(outcome.faults)
        row["seeds"].append(outcome.seed)
    total = sum(o.injected for o in OUTCOMES)
    write = terminalreporter.write_line
    write("")
    write(f"fault suite: {len(OUTCOMES)} runs, {total} injected faults")
    for name, row in by_scenario.items():
        faults = ", ".join(f"{k} {v}" for k, v in sorted(row["faults"].items()))
        write(f"  {name}: {row['runs']} runs, {row['failed']} failed; {faults}")
    report = Path(os.environ.get("GRISTMILL_CHAOS_REPORT", ".gristmill-chaos.json"))
    report.write_text(
        json.dumps(
            {
                "runs": len(OUTCOMES),
                "injected": total,
                "scenarios": {
                    n: {**r, "faults": dict(r["faults"])} for n, r in by_scenario.items()
                },
                "outcomes": [o.__dict__ for o in OUTCOMES],
            },
            indent=2,
            default=str,
        )
    )


@pytest.fixture(autouse=True)
def _no_faults_leak_into_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRISTMILL_FAULTS", raising=False)
