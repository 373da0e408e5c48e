"""Task classes sent by value, as Ray sends the classes of a user's script (through cloudpickle),
stay decodable in the process that sent them and in one that receives them again and again."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from gristmill import Task

cloudpickle = pytest.importorskip("ray.cloudpickle")

# A user's script: its classes live in `__main__`, so cloudpickle sends them by value.
SCRIPT = """
import base64, json
import pyarrow as pa
import ray.cloudpickle as cloudpickle
from gristmill import DocumentBatch, Task

class SampleTask(Task[list]):  # implements Task's abstract methods itself, as the quickstart's
    @property
    def num_items(self):
        return len(self.data)

    def validate(self):
        return True

class TaggedBatch(DocumentBatch):  # inherits them, and adds a method
    def tag(self):
        return "tagged"

tasks = [SampleTask(task_id="s", data=[1, 2]), TaggedBatch(task_id="b", data=pa.table({"x": [1]}))]
blob = cloudpickle.dumps((SampleTask, TaggedBatch))
assert cloudpickle.loads(blob) == (SampleTask, TaggedBatch)  # the sender keeps its own classes
decoded = [Task.from_bytes(t.to_bytes()) for t in tasks]
print(json.dumps({
    "decoded_as_own_classes": [type(d) is type(t) for d, t in zip(decoded, tasks)],
    "blob": base64.b64encode(blob).decode(),
    "payloads": [base64.b64encode(t.to_bytes()).decode() for t in tasks],
}))
"""


@pytest.fixture(scope="module")
def sent() -> dict[str, object]:
    """What the script printed after sending its classes by value and decoding its tasks."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.splitlines()[-1]))


def test_the_sending_process_still_decodes_its_tasks_as_its_own_classes(
    sent: dict[str, object],
) -> None:
    assert sent["decoded_as_own_classes"] == [True, True]


def test_a_process_that_receives_the_classes_twice_decodes_with_the_first_copy(
    sent: dict[str, object],
) -> None:
    blob = base64.b64decode(str(sent["blob"]))
    sample, tagged = cloudpickle.loads(blob)
    assert cloudpickle.loads(blob) == (sample, tagged)  # the second copy is thrown away
    payloads = [base64.b64decode(p) for p in sent["payloads"]]  # type: ignore[attr-defined]
    first, second = (Task.from_bytes(p) for p in payloads)
    assert type(first) is sample
    assert (first.task_id, first.data, first.num_items) == ("s", [1, 2], 2)
    assert type(second) is tagged
    assert second.tag() == "tagged"
