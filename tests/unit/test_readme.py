"""The README's example must run as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def test_readme_example_runs_and_keeps_only_the_long_document() -> None:
    [example] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(example.splitlines()) <= 15  # it is the first-screen example
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == ["                  text", "0  long enough to keep"]
