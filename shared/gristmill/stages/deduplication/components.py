"""Connected components of the candidate-duplicate graph, distributed over node partitions.

The edges (`BucketsToEdgesStage`) are stored both ways, partitioned by their first node
(`node_partition`), so one task holds one partition's nodes and their neighbours and no
process holds the graph. Every node's label starts as the smallest id in its closed
neighbourhood; then, round after round, a node whose label fell tells its neighbours, and a
neighbour takes the smaller label. Messages cross partitions as files:

    path/round=<r>/labels/part=<p>.parquet             node, label (every node of p)
    path/round=<r>/messages/part=<q>/from=<p>.parquet  node, label (nodes of q to lower)

A round that sends no message is the last: every label is then the smallest id of its
component (labels only fall, and each fall reaches every neighbour). The number of rounds is
about the diameter of the largest component, small for duplicate clusters. Each task reads
and writes only its own files at fixed names, so a task killed half way and run again writes
the same bytes.

`IdentifyDuplicatesStage` reads the last labels: a document labelled with another id is a
duplicate of it (of an indexed document when the label is an index node).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.errors import GristmillError
from gristmill.stages.base import ProcessingStage
from gristmill.stages.deduplication.fuzzy import node_partition, parse_index_node
from gristmill.tasks import FileGroupTask

__all__ = [
    "ConnectedComponentsStage",
    "IdentifyDuplicatesStage",
    "labels_path",
    "message_target",
]

_LABELS = pa.schema([("node", pa.string()), ("label", pa.string())])
_KINDS = ("edges", "labels", "messages")


def labels_path(path: str, round_: int, partition: int) -> str:
    """Where round `round_` writes partition `partition`'s labels."""
    return fs.join(path, f"round={round_}/labels/part={partition}.parquet")


def _messages_path(path: str, round_: int, target: int, partition: int) -> str:
    return fs.join(path, f"round={round_}/messages/part={target}/from={partition}.parquet")


def message_target(file: str) -> int:
    """The partition a message file is addressed to."""
    return int(file.rsplit("/messages/part=", 1)[1].split("/", 1)[0])


def _read(path: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(fs.read_bytes(path)))


def _write(path: str, rows: dict[str, str]) -> None:
    table = pa.table(
        {"node": pa.array(list(rows), pa.string()), "label": pa.array(list(rows.values()))},
        schema=_LABELS,
    )
    with fs.atomic_write(path) as handle:
        pq.write_table(table, handle)


class ConnectedComponentsStage(ProcessingStage[FileGroupTask, FileGroupTask]):
    """One round of label propagation for one node partition (see the module docstring).

    The task's files are the partition's edge files, its labels of the round before and the
    messages sent to it then; its metadata says which is which (`kinds`: one of "edges",
    "labels", "messages" per file), and names the `partition` and the `round`. The result
    lists the labels written and the message files sent, for the next round.
    """

    name = "connected_components"

    def __init__(self, path: str, num_partitions: int = 16):
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, int):
            raise GristmillError(f"stage '{self.name}': num_partitions must be an int")
        if num_partitions < 1:
            raise GristmillError(
                f"stage '{self.name}': num_partitions must be >= 1, got {num_partitions}"
            )
        self.path, self.num_partitions = path, num_partitions

    def process(self, task: FileGroupTask) -> FileGroupTask:
        """Lower the partition's labels; tell the neighbours of those that fell."""
        partition, round_, files = self._inputs(task)
        neighbours: dict[str, list[str]] = {}
        for file in files["edges"]:
            table = _read(file)
            for u, v in zip(
                table.column("u").to_pylist(), table.column("v").to_pylist(), strict=True
            ):
                neighbours.setdefault(u, []).append(v)
        if round_ == 0:
            labels = {u: min(u, *vs) for u, vs in neighbours.items()}
            # Every neighbour already took this node's own id into account.
            fell = [u for u, label in labels.items() if label != u]
        else:
            labels, fell = self._lowered(files, neighbours, partition, round_)
        outgoing: dict[int, dict[str, str]] = {}
        for u in fell:
            label = labels[u]
            for v in neighbours[u]:
                if label < v:
                    box = outgoing.setdefault(node_partition(v, self.num_partitions), {})
                    if v not in box or label < box[v]:
                        box[v] = label
        target = labels_path(self.path, round_, partition)
        _write(target, labels)
        written = [target]
        for other in sorted(outgoing):
            sent = _messages_path(self.path, round_, other, partition)
            _write(sent, dict(sorted(outgoing[other].items())))
            written.append(sent)
        return FileGroupTask(
            task_id=task.task_id,
            data=written,
            _metadata={"partition": partition, "round": round_},
        )

    def _inputs(self, task: FileGroupTask) -> tuple[int, int, dict[str, list[str]]]:
        meta = task._metadata
        kinds = meta.get("kinds")
        partition, round_ = meta.get("partition"), meta.get("round")
        if (
            not isinstance(partition, int)
            or not isinstance(round_, int)
            or not isinstance(kinds, list)
            or len(kinds) != len(task.data)
            or any(k not in _KINDS for k in kinds)
        ):
            raise GristmillError(
                f"stage '{self.name}': task {task.task_id} needs metadata 'partition' and "
                f"'round' (ints) and 'kinds' (one of {', '.join(_KINDS)} per file), got "
                f"{ {k: meta.get(k) for k in ('partition', 'round', 'kinds')} }"
            )
        files: dict[str, list[str]] = {kind: [] for kind in _KINDS}
        for kind, file in zip(kinds, task.data, strict=True):
            files[kind].append(file)
        if round_ > 0 and len(files["labels"]) != 1:
            raise GristmillError(
                f"stage '{self.name}': round {round_} of partition {partition} needs the "
                f"labels of round {round_ - 1}, got {len(files['labels'])} label files"
            )
        return partition, round_, files

    def _lowered(
        self,
        files: dict[str, list[str]],
        neighbours: dict[str, list[str]],
        partition: int,
        round_: int,
    ) -> tuple[dict[str, str], list[str]]:
        """The labels of the round before, lowered by the messages; the nodes that fell."""
        table = _read(files["labels"][0])
        labels = dict(
            zip(table.column("node").to_pylist(), table.column("label").to_pylist(), strict=True)
        )
        fell: set[str] = set()
        for file in files["messages"]:
            sent = _read(file)
            for node, label in zip(
                sent.column("node").to_pylist(), sent.column("label").to_pylist(), strict=True
            ):
                current = labels.get(node)
                if current is None or node not in neighbours:
                    raise GristmillError(
                        f"stage '{self.name}': round {round_}: {file} addresses node "
                        f"{node!r}, which partition {partition} does not hold"
                    )
                if label < current:
                    labels[node] = label
                    fell.add(node)
        return labels, sorted(fell)


class IdentifyDuplicatesStage(ProcessingStage[FileGroupTask, FileGroupTask]):
    """Reads one partition's final labels and writes `path/duplicates-<partition>.parquet`:
    every document whose label is another node, with the id it duplicates (`kept_id`, the
    smallest id of its component) and, where that is an indexed document of an earlier run,
    the source it came from (`kept_source`)."""

    name = "identify_duplicates"

    def __init__(self, path: str):
        self.path = path

    def process(self, task: FileGroupTask) -> FileGroupTask:
        """The duplicates of one partition."""
        partition = task._metadata.get("partition")
        if not isinstance(partition, int) or len(task.data) != 1:
            raise GristmillError(
                f"stage '{self.name}': task {task.task_id} needs one labels file and its "
                f"'partition' in metadata, got {len(task.data)} file(s), partition "
                f"{partition!r}"
            )
        table = _read(task.data[0])
        ids: list[str] = []
        kept: list[str] = []
        sources: list[str | None] = []
        for node, label in zip(
            table.column("node").to_pylist(), table.column("label").to_pylist(), strict=True
        ):
            if node == label or parse_index_node(node) is not None:
                continue
            indexed = parse_index_node(label)
            ids.append(node)
            kept.append(indexed[0] if indexed else label)
            sources.append(indexed[1] if indexed else None)
        target = fs.join(self.path, f"duplicates-{partition}.parquet")
        write_duplicates(target, ids, kept, sources)
        return FileGroupTask(task_id=task.task_id, data=[target], _metadata={"count": len(ids)})


def write_duplicates(
    target: str, ids: list[str], kept: list[str], sources: list[str | None]
) -> None:
    """A duplicate list: id, kept_id, kept_source, sorted by id."""
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "kept_id": pa.array(kept, pa.string()),
            "kept_source": pa.array(sources, pa.string()),
        }
    ).sort_by("id")
    with fs.atomic_write(target) as handle:
        pq.write_table(table, handle)
