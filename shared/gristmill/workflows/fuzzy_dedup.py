"""`FuzzyDeduplicationWorkflow`: finds near-duplicates across a dataset (MinHash + LSH +
connected components) with a few pipelines, on any executor.

The method is explained in `gristmill.stages.deduplication.fuzzy` (steps 1-5) and
`gristmill.stages.deduplication.components` (the rounds); this module only runs them:

    cache_path/buckets/shard=<s>/<batch>.parquet   band keys and ids, by key
    cache_path/edges/part=<p>/<shard task>.parquet  candidate edges, both ways, by node
    cache_path/components/round=<r>/...             labels and messages of each round
    output_path/duplicates-<p>.parquet              id, kept_id, kept_source
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.errors import GristmillError
from gristmill.executors.base import BaseExecutor
from gristmill.pipeline import Pipeline
from gristmill.stages.base import ProcessingStage
from gristmill.stages.deduplication import minhash
from gristmill.stages.deduplication.components import (
    ConnectedComponentsStage,
    IdentifyDuplicatesStage,
    message_target,
    write_duplicates,
)
from gristmill.stages.deduplication.fuzzy import (
    BucketsToEdgesStage,
    FuzzyDuplicateRemoval,
    LSHStage,
    MinHashStage,
    fuzzy_settings,
)
from gristmill.tasks import FileGroupTask, Task, content_task_id

__all__ = ["FuzzyDeduplicationWorkflow"]

_LIST = re.compile(r"/duplicates-(\d+)\.parquet$")


def _part_of(path: str, key: str) -> int:
    """The integer after `/<key>=` in a path this workflow wrote."""
    tail = path.rsplit(f"/{key}=", 1)[1]
    return int(tail[: len(tail) - len(tail.lstrip("0123456789"))])


class FuzzyDeduplicationWorkflow:
    """Finds near-duplicate documents across a whole dataset.

    `read_stages` read the documents with ids (e.g. `[JsonlReader(path), AddId()]`);
    `cache_path` receives the intermediate files, `output_path` the duplicate lists. `run()`
    returns the number of documents to remove; `removal_stage()` removes them.

    Shingles are `char_ngrams` characters (NeMo Curator's default, 24) or, when given,
    `word_ngrams` words (datatrove's: 5); signatures have `num_bands` x `minhashes_per_band`
    values (20 x 13: pairs near Jaccard `lsh_threshold(20, 13)` ~ 0.795 become candidates).
    `false_positive_check` keeps only candidate pairs whose exact Jaccard similarity is at
    least `jaccard_threshold`. Bucket files go to `num_shards` shards, graph nodes to
    `num_partitions` partitions: one task each, so these bound a task's memory.

    With `index` (a name, under `index_root` or `default_index_root()`), the documents are
    also deduplicated against every document an earlier run with the same index and settings
    saw, and their band keys join the index for later runs; `index_owner` names this run's
    claims (the service sets it to the job).
    """

    def __init__(
        self,
        read_stages: list[ProcessingStage[Any, Any]],
        output_path: str,
        cache_path: str,
        text_field: str = "text",
        id_field: str = "id",
        char_ngrams: int = 24,
        num_bands: int = 20,
        minhashes_per_band: int = 13,
        seed: int = 42,
        *,
        word_ngrams: int | None = None,
        false_positive_check: bool = False,
        jaccard_threshold: float = 0.8,
        num_shards: int = 16,
        num_partitions: int = 16,
        index: str | None = None,
        index_root: str | None = None,
        index_owner: str = "",
        index_shards: int = 256,
        max_rounds: int = 100,
    ):
        for name, value in {
            "num_bands": num_bands,
            "minhashes_per_band": minhashes_per_band,
            "max_rounds": max_rounds,
        }.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GristmillError(
                    f"FuzzyDeduplicationWorkflow: {name} must be an int >= 1, got {value!r}"
                )
        self.read_stages = read_stages
        self.output_path, self.cache_path = output_path, cache_path
        self.text_field, self.id_field = text_field, id_field
        self.char_ngrams, self.word_ngrams = char_ngrams, word_ngrams
        self.num_bands, self.minhashes_per_band, self.seed = num_bands, minhashes_per_band, seed
        self.false_positive_check, self.jaccard_threshold = false_positive_check, jaccard_threshold
        self.num_shards, self.num_partitions = num_shards, num_partitions
        self.index, self.index_root, self.index_owner = index, index_root, index_owner
        self.index_shards, self.max_rounds = index_shards, max_rounds
        # Seconds per step of the last run (signatures, edges, components, identify), and
        # how many rounds of label propagation it took.
        self.timings: dict[str, float] = {}
        self.rounds = 0
        # Build every stage now, so bad settings fail before anything runs.
        self._signing = self._signing_stages()
        self._edges = self._edge_stage()

    @property
    def threshold(self) -> float:
        """The similarity the bands switch at: (1 / num_bands) ** (1 / minhashes_per_band)."""
        return minhash.lsh_threshold(self.num_bands, self.minhashes_per_band)

    def _signing_stages(self) -> list[ProcessingStage[Any, Any]]:
        return [
            MinHashStage(
                self.text_field,
                char_ngrams=self.char_ngrams,
                num_hashes=self.num_bands * self.minhashes_per_band,
                seed=self.seed,
                word_ngrams=self.word_ngrams,
            ),
            LSHStage(
                fs.join(self.cache_path, "buckets"),
                num_bands=self.num_bands,
                minhashes_per_band=self.minhashes_per_band,
                num_shards=self.num_shards,
                id_field=self.id_field,
                false_positive_check=self.false_positive_check,
                text_field=self.text_field,
                char_ngrams=self.char_ngrams,
                word_ngrams=self.word_ngrams,
            ),
        ]

    def _edge_stage(self) -> BucketsToEdgesStage:
        settings = fuzzy_settings(
            self.char_ngrams, self.word_ngrams, self.num_bands, self.minhashes_per_band, self.seed
        )
        return BucketsToEdgesStage(
            fs.join(self.cache_path, "edges"),
            num_partitions=self.num_partitions,
            false_positive_check=self.false_positive_check,
            jaccard_threshold=self.jaccard_threshold,
            index=self.index,
            index_root=self.index_root,
            index_owner=self.index_owner,
            index_shards=self.index_shards,
            index_settings=settings if self.index is not None else None,
        )

    def run(self, executor: BaseExecutor | None = None) -> int:
        """Sign and bucket every document, link the buckets, find the components, list the
        duplicates; the number of duplicates."""
        self.timings, self.rounds = {}, 0
        started = time.perf_counter()
        signed = Pipeline("fuzzy_dedup_minhash", [*self.read_stages, *self._signing])
        buckets = [path for task in signed.run(executor) for path in task.data]
        started = self._timed("signatures", started)
        edges = self._run_edges(executor, buckets)
        started = self._timed("edges", started)
        labels = self._run_components(executor, edges)
        started = self._timed("components", started)
        found = self._run_identify(executor, labels)
        self._timed("identify", started)
        return found

    def _timed(self, step: str, started: float) -> float:
        now = time.perf_counter()
        self.timings[step] = now - started
        return now

    def _run_edges(self, executor: BaseExecutor | None, buckets: list[str]) -> list[str]:
        by_shard: dict[int, list[str]] = defaultdict(list)
        for path in buckets:
            by_shard[_part_of(path, "shard")].append(path)
        groups: list[Task[Any]] = [
            FileGroupTask(
                task_id=content_task_id("fuzzy-shard", str(s), *sorted(files)),
                data=sorted(files),
                _metadata={"shard": s},
            )
            for s, files in sorted(by_shard.items())
        ]
        if not groups:
            return []
        linked = Pipeline("fuzzy_dedup_edges", [self._edges]).run(executor, groups)
        return [path for task in linked for path in task.data]

    def _run_components(self, executor: BaseExecutor | None, edges: list[str]) -> dict[int, str]:
        """Rounds of label propagation until one sends no message; each partition's labels."""
        by_part: dict[int, list[str]] = defaultdict(list)
        for path in edges:
            by_part[_part_of(path, "part")].append(path)
        stage = ConnectedComponentsStage(
            fs.join(self.cache_path, "components"), self.num_partitions
        )
        labels: dict[int, str] = {}
        inbox: dict[int, list[str]] = {}
        for round_ in range(self.max_rounds):
            groups: list[Task[Any]] = []
            for part, files in sorted(by_part.items()):
                data = sorted(files)
                kinds = ["edges"] * len(data)
                if round_:
                    data += [labels[part], *sorted(inbox.get(part, []))]
                    kinds += ["labels"] + ["messages"] * len(inbox.get(part, []))
                groups.append(
                    FileGroupTask(
                        task_id=content_task_id("fuzzy-components", str(round_), str(part), *data),
                        data=data,
                        _metadata={"partition": part, "round": round_, "kinds": kinds},
                    )
                )
            if not groups:
                return {}
            done = Pipeline(f"fuzzy_dedup_components_{round_}", [stage]).run(executor, groups)
            self.rounds = round_ + 1
            inbox = defaultdict(list)
            for task in done:
                labels[_part_of(task.data[0], "part")] = task.data[0]
                for sent in task.data[1:]:
                    inbox[message_target(sent)].append(sent)
            if not inbox:
                return labels
        raise GristmillError(
            f"fuzzy dedup: connected components did not settle in {self.max_rounds} rounds; "
            f"raise max_rounds (a component this long is unusual: check the bands)"
        )

    def _run_identify(self, executor: BaseExecutor | None, labels: dict[int, str]) -> int:
        groups: list[Task[Any]] = [
            FileGroupTask(
                task_id=content_task_id("fuzzy-identify", str(part), path),
                data=[path],
                _metadata={"partition": part},
            )
            for part, path in sorted(labels.items())
        ]
        if groups:
            Pipeline("fuzzy_dedup_identify", [IdentifyDuplicatesStage(self.output_path)]).run(
                executor, groups
            )
        # A partition without nodes still gets its (empty) list, so no stale list remains.
        for part in range(self.num_partitions):
            if part not in labels:
                write_duplicates(
                    fs.join(self.output_path, f"duplicates-{part}.parquet"), [], [], []
                )
        # Lists an earlier run with more partitions left would be read by the removal stage.
        ours = []
        for path in fs.expand_paths(self.output_path, [".parquet"], "fuzzy dedup"):
            named = _LIST.search(path)
            if named and int(named.group(1)) >= self.num_partitions:
                fs.remove_file(path)
            else:
                ours.append(path)
        return sum(
            pq.ParquetFile(pa.BufferReader(fs.read_bytes(f))).metadata.num_rows for f in ours
        )

    def removal_stage(self) -> FuzzyDuplicateRemoval:
        """The stage that drops the duplicates found, for the pipeline that keeps the rest."""
        return FuzzyDuplicateRemoval(self.output_path, self.id_field)
