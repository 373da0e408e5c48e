"""A job's trace for people: the span tree, its critical path, a waterfall in the terminal.

The critical path is what the job waited for: from the attempt that ended last, back through
the attempt before it (a retry waited for the failure) or else the task that made it (a child
cannot start before its parent task ended), to the planning of the job. Every span on it is
marked `critical`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gristmill.telemetry.tracing import format_trace_id, trace_id_of

__all__ = ["critical_path", "for_task", "job_trace", "trace_document", "waterfall"]

WIDTH = 40  # characters of the waterfall's time axis


def _link(span: dict[str, Any], kind: str) -> str | None:
    for link in span.get("links") or ():
        if (link.get("attributes") or {}).get("gm.link") == kind:
            return str(link["span_id"])
    return None


def critical_path(spans: list[dict[str, Any]]) -> set[str]:
    """The span ids on the critical path (see the module docstring)."""
    by_id = {s["span_id"]: s for s in spans}
    attempts = [s for s in spans if (s.get("attributes") or {}).get("gm.kind") == "attempt"]
    path: set[str] = set()
    for kind in ("job", "plan"):
        path |= {s["span_id"] for s in spans if (s.get("attributes") or {}).get("gm.kind") == kind}
    if not attempts:
        return path
    current: dict[str, Any] | None = max(attempts, key=lambda s: s.get("end_ns") or 0)
    while current is not None and current["span_id"] not in path:
        path.add(current["span_id"])
        before = _link(current, "previous_attempt") or _link(current, "parent_task")
        current = by_id.get(before) if before else None
    return path


def for_task(spans: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    """The spans of `task_id`'s attempts and everything under them."""
    keep = {s["span_id"] for s in spans if (s.get("attributes") or {}).get("gm.task") == task_id}
    grew = True
    while grew:
        more = {s["span_id"] for s in spans if s.get("parent_span_id") in keep} - keep
        keep |= more
        grew = bool(more)
    return [s for s in spans if s["span_id"] in keep]


def trace_document(trace_id: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    """The `--json` form: the trace id and its spans, each marked `critical` or not."""
    path = critical_path(spans)
    return {"trace_id": trace_id, "spans": [{**s, "critical": s["span_id"] in path} for s in spans]}


def job_trace(job: str, spans: list[dict[str, Any]], task: str | None = None) -> dict[str, Any]:
    """`job`'s trace document from its stored spans (only `task`'s, when given)."""
    document = trace_document(format_trace_id(trace_id_of(job)), spans)
    if task:
        document["spans"] = for_task(document["spans"], task)
    return document


def _ordered(spans: list[dict[str, Any]]) -> Iterable[tuple[int, dict[str, Any]]]:
    """Depth-first, children by start time; spans whose parent is not stored come as roots."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        children.setdefault(parent if parent in ids else None, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.get("start_ns") or 0, s["span_id"]))
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, span = stack.pop()
        yield depth, span
        stack.extend((depth + 1, c) for c in reversed(children.get(span["span_id"], [])))


def _label(span: dict[str, Any]) -> str:
    attributes = span.get("attributes") or {}
    if attributes.get("gm.kind") == "attempt":
        name = str(attributes.get("gm.step_name", ""))
        name = name if len(name) <= 24 else name[:21] + "..."
        return (
            f"task {str(attributes.get('gm.task'))[:16]} #{attributes.get('gm.attempt')} "
            f"step {attributes.get('gm.step')} {name} on {attributes.get('gm.worker', '?')}"
        )
    return str(span.get("name", "?"))


def waterfall(document: dict[str, Any], width: int = WIDTH) -> str:
    """The trace as text: one line per span (tree order), a bar on a shared time axis, its
    duration and status; `*` marks the critical path."""
    spans: list[dict[str, Any]] = document["spans"]
    lines = [f"trace {document['trace_id']}"]
    if not spans:
        return lines[0] + "\n(no spans stored yet)"
    start = min(s["start_ns"] for s in spans)
    end = max(s.get("end_ns") or s["start_ns"] for s in spans)
    scale = max(end - start, 1) / width
    rows = []
    for depth, span in _ordered(spans):
        left = int((span["start_ns"] - start) / scale)
        right = max(left + 1, int(((span.get("end_ns") or span["start_ns"]) - start) / scale))
        bar = " " * left + "█" * (min(right, width) - left)
        seconds = ((span.get("end_ns") or span["start_ns"]) - span["start_ns"]) / 1e9
        mark = "*" if span.get("critical") else " "
        status = "ERROR" if span.get("status") == "error" else ""
        label = "  " * depth + _label(span)
        rows.append((mark, label, bar.ljust(width), f"{seconds:8.3f}s", status, span))
    label_width = min(max(len(r[1]) for r in rows), 90)
    for mark, label, bar, seconds, status, span in rows:
        line = f"{mark} {label[:label_width]:<{label_width}} |{bar}| {seconds} {status}"
        lines.append(line.rstrip())
        if status:
            for event in span.get("events") or ():
                attributes = event.get("attributes") or {}
                if event.get("name") == "exception":
                    message = f"{attributes.get('exception.type')}: "
                    message += str(attributes.get("exception.message", ""))
                    indent = " " * (len(label) - len(label.lstrip()))
                    lines.append(f"    {indent}! {message}")
    lines.append(f"* critical path; {len(spans)} spans over {(end - start) / 1e9:.3f} s")
    return "\n".join(lines)
