"""Benchmark: the text quality filters end to end, against the I/O floor.

    .venv/bin/python bench/text_quality.py [--docs 100000] [--files 16]

Generates (once, cached under bench/.cache/) a deterministic corpus of English-like prose as
JSONL: ~100k documents, ~200 MB, with ~3% too short, ~2% keyword-stuffed, ~2% markup-heavy and
~5% exact duplicates. Then times, each in a fresh process so peak memory is its own:

  floor     pyarrow.json.read_json of every file + pyarrow.parquet.write_table, no filtering
  filters   JsonlReader -> WordCountFilter(50, 100000) -> NonAlphaNumericFilter(0.25)
            -> RepeatingTopNGramsFilter(n=2, 0.2) -> ParquetWriter, on LocalExecutor
  dedup     exact-duplicate identification, then the filter pipeline with AddId and
            duplicate removal in front of the filters

and prints docs/s, MB/s, peak RSS and the ratio to the floor as a Markdown table.
Target (issue 3): filters within 4x the floor's wall time, peak RSS under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
CORPUS_VERSION = 2  # bump when the generator changes, so a stale cached corpus is not reused

_WORDS = (  # noqa: SIM905 - a word list reads best as text
    "the of and to in a is that for it as was with be by on not he i this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will can more other its some what could them time into only about people these "
    "two then may any like first new also after our way many must because even before most "
    "through where much should well being between over still such years under world life "
    "during against government system number house work school water history city country "
    "family state part place case point group problem fact hand week company right program "
    "question night story study book eye job word business issue side kind head service "
    "friend father power hour game line end member law car market name president team minute "
    "idea body information nothing research girl guy food moment air teacher force education "
    "foot boy age policy process music datum curation model training quality filter river "
    "mountain village garden morning summer "
).split()


def _sentence(rng: random.Random, weights: list[float]) -> str:
    words = rng.choices(_WORDS, weights, k=rng.randint(6, 22))
    words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] += ","
    return " ".join(words) + rng.choice(".....?!")


def _prose(rng: random.Random, weights: list[float], words: int) -> str:
    paragraphs, count = [], 0
    while count < words:
        sentences = [_sentence(rng, weights) for _ in range(rng.randint(3, 7))]
        count += sum(len(s.split()) for s in sentences)
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def generate(docs: int, files: int) -> Path:
    """Write the corpus (if not cached) and return its directory."""
    target = CACHE / f"corpus-v{CORPUS_VERSION}-{docs}-{files}"
    if (target / "DONE").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rng = random.Random(20261126)
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(_WORDS))]
    texts: list[str] = []
    for _ in range(docs):
        kind = rng.random()
        if kind < 0.03:  # too short
            text = _prose(rng, weights, 1)[: rng.randint(20, 150)]
        elif kind < 0.05:  # keyword-stuffed: one phrase over and over
            phrase = " ".join(rng.choices(_WORDS, k=2))
            text = " ".join([phrase] * rng.randint(60, 200)) + ". " + _prose(rng, weights, 40)
        elif kind < 0.07:  # markup-heavy
            body = _prose(rng, weights, 250).split(" ")
            text = " ".join(f'<td class="c{i % 7}">{w}</td>' for i, w in enumerate(body))
        elif kind < 0.12 and texts:  # exact duplicate of an earlier document
            text = texts[rng.randrange(len(texts))]
        else:
            text = _prose(rng, weights, rng.randint(240, 500))
        texts.append(text)
    per_file = -(-docs // files)
    for index in range(files):
        with open(target / f"part-{index:04d}.jsonl", "w", encoding="utf-8") as out:
            for row, text in enumerate(texts[index * per_file : (index + 1) * per_file]):
                record = {"url": f"https://example.com/{index}/{row}", "text": text}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    (target / "DONE").touch()
    return target


def _phase_floor(corpus: Path, out: Path) -> int:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    rows = 0
    for path in sorted(corpus.glob("*.jsonl")):
        table = pj.read_json(path)
        pq.write_table(table, out / (path.stem + ".parquet"))
        rows += table.num_rows
    return rows


def _filters():  # type: ignore[no-untyped-def]
    from gristmill.stages.text.filters import (
        NonAlphaNumericFilter,
        RepeatingTopNGramsFilter,
        ScoreFilter,
        WordCountFilter,
    )

    return [
        ScoreFilter(WordCountFilter(50, 100000)),
        ScoreFilter(NonAlphaNumericFilter(0.25)),
        ScoreFilter(RepeatingTopNGramsFilter(n=2, max_repeating_ngram_ratio=0.2)),
    ]


def _phase_filters(corpus: Path, out: Path) -> int:
    from gristmill import LocalExecutor, Pipeline
    from gristmill.stages.text.io import JsonlReader, ParquetWriter

    executor = LocalExecutor()
    stages = [JsonlReader(str(corpus)), *_filters(), ParquetWriter(str(out / "data"))]
    Pipeline("bench-filters", stages).run(executor)
    return executor.totals[0].items_out if len(executor.totals) > 1 else _read_rows(executor)


def _read_rows(executor) -> int:  # type: ignore[no-untyped-def]
    # Everything fused into one step: the reader's output is in the perf stats, not the totals.
    return int(executor.totals[0].items_in)


def _phase_dedup(corpus: Path, out: Path) -> int:
    from gristmill import LocalExecutor, Pipeline
    from gristmill.stages.text.io import AddId, JsonlReader, ParquetWriter
    from gristmill.workflows import ExactDeduplicationWorkflow

    workflow = ExactDeduplicationWorkflow(
        [JsonlReader(str(corpus)), AddId()], str(out / "duplicates"), str(out / "buckets")
    )
    duplicates = workflow.run()
    stages = [
        JsonlReader(str(corpus)),
        AddId(),
        workflow.removal_stage(),
        *_filters(),
        ParquetWriter(str(out / "data")),
    ]
    Pipeline("bench-dedup", stages).run(LocalExecutor())
    print(f"duplicates found: {duplicates}", file=sys.stderr)
    return 0


PHASES = {"floor": _phase_floor, "filters": _phase_filters, "dedup": _phase_dedup}


def _run_phase(name: str, corpus: Path) -> tuple[float, float]:
    """Run one phase in a fresh process; return (wall seconds, peak RSS MB of that process)."""
    out = CACHE / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--phase", name, "--corpus", str(corpus), "--out", str(out)]
    started = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"phase {name} failed with status {status}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--corpus")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.phase:  # inside a measured child process
        started = time.perf_counter()
        PHASES[args.phase](Path(args.corpus), Path(args.out))
        print(f"{args.phase}: {time.perf_counter() - started:.2f} s in process", file=sys.stderr)
        return
    corpus = generate(args.docs, args.files)
    size_mb = sum(p.stat().st_size for p in corpus.glob("*.jsonl")) / 1e6
    results = {name: _run_phase(name, corpus) for name in ("floor", "filters", "dedup")}
    floor = results["floor"][0]
    from gristmill.stages.text.filters import kernels

    print(
        f"\n{args.docs:,} documents, {size_mb:.0f} MB of JSONL in {args.files} files; "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"C kernels {'on' if kernels.available() else 'OFF'}\n"
    )
    print("| run | wall s | docs/s | MB/s | peak RSS MB | x floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (wall, rss) in results.items():
        print(
            f"| {name} | {wall:.2f} | {args.docs / wall:,.0f} | {size_mb / wall:,.0f} "
            f"| {rss:,.0f} | {wall / floor:.2f} |"
        )


if __name__ == "__main__":
    main()
