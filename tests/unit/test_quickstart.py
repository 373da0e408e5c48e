"""The quickstart example: it must run and print what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.py"


def test_quickstart_prints_its_plan_results_and_totals() -> None:
    result = subprocess.run(
        [sys.executable, QUICKSTART], capture_output=True, text=True, check=True, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        "Pipeline 'quickstart': 3 stages in 2 steps",
        "  step 1  [cpus=1, batch_size=1]  (fused)",
        "    TaskCreationStage  reads: -                    writes: sentence",
        "    WordCountStage     reads: sentence             writes: word_count",
        "  step 2  [cpus=0.5, batch_size=2]",
        "    SentimentStage     reads: sentence             writes: sentiment",
    ]
    assert lines[-5:] == [
        "step                              tasks in/out  items in/out",
        "TaskCreationStage+WordCountStage           1/4          0/12",
        "SentimentStage                             4/4         12/12",
        "",
        "4 tasks, 12 sentences scored",
    ]
    assert lines.count("                            sentence  word_count sentiment") == 1
    assert "             dull bright the awful a           5  negative" in lines
    assert result.stderr == ""
