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
    assert lines[:7] == [
        "Pipeline 'quickstart': 3 stages in 3 steps",
        "  step 1  [cpus=1, batch_size=1]  ends: 'TaskCreationStage' fans out (process returns list[SampleTask])",
        "    TaskCreationStage  reads: -                    writes: sentence",
        "  step 2  [cpus=1, batch_size=1]  ends: next stage 'SentimentStage' overrides process_batch",
        "    WordCountStage     reads: sentence             writes: word_count",
        "  step 3  [cpus=0.5, batch_size=2]  ends: last stage",
        "    SentimentStage     reads: sentence             writes: sentiment",
    ]
    assert lines[-6:] == [
        "step               tasks in/out  items in/out",
        "TaskCreationStage           1/4          0/12",
        "WordCountStage              4/4         12/12",
        "SentimentStage              4/4         12/12",
        "",
        "4 tasks, 12 sentences scored",
    ]
    assert lines.count("                            sentence  word_count sentiment") == 1
    assert "             dull bright the awful a           5  negative" in lines
    assert result.stderr == ""
