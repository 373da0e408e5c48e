"""Benchmark: fuzzy deduplication end to end, JSONL in, duplicate lists out.

    .venv/bin/python bench/fuzzy_dedup.py [--docs 20000] [--files 16] [--scale 5]

Runs `FuzzyDeduplicationWorkflow` on `LocalExecutor` over the bench corpus of
`bench/text_quality.py` (English-like prose, 240-500 words a document, about 5% exact
duplicates) plus light edits of 5% of its documents (near-duplicates: one to four words
replaced, each appended to the file of its original). Each configuration runs in a fresh
process, so that peak memory is its own:

  datatrove   word 5-grams, 14 bands x 8 hashes (datatrove 0.10.1's MinhashConfig default)
  nemo        character 24-grams, 20 bands x 13 hashes (NeMo Curator's defaults)

then the datatrove configuration again on a corpus `--scale` times as large, for memory
growth: with the default 16 bucket shards, and with `--scale` x 16 (a shard task holds
docs x bands / shards rows, so shards that grow with the corpus keep it flat). Prints docs/s,
seconds per step, peak RSS of the measured process tree and the duplicates found, as a
Markdown table and then as JSON lines.
Targets (issue 14): >= 4,000 docs/s with datatrove's settings on 2 cores; peak memory at
`--scale` x the corpus within 20% of 1x.
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
sys.path.insert(0, str(HERE))

from text_quality import CACHE, generate  # noqa: E402

CONFIGS = {
    "datatrove": {"word_ngrams": 5, "num_bands": 14, "minhashes_per_band": 8},
    "nemo": {"char_ngrams": 24, "num_bands": 20, "minhashes_per_band": 13},
}
NEAR_FRACTION = 0.05
FILLERS = ["the", "a", "new", "old", "very", "also", "then", "more"]


def near_corpus(docs: int, files: int) -> Path:
    """The bench corpus plus light edits of NEAR_FRACTION of its documents, in one more file
    (cached next to it); each file gets the edits of its own documents."""
    base = generate(docs, files)
    target = CACHE / f"fuzzy-v2-{base.name}"
    if (target / "DONE").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rng = random.Random(14)
    for path in sorted(base.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in list(lines):
            if rng.random() < NEAR_FRACTION:
                row = json.loads(line)
                words = row["text"].split(" ")
                for _ in range(rng.randint(1, 4)):
                    words[rng.randrange(len(words))] = rng.choice(FILLERS)
                edited = {"url": row["url"] + "#edited", "text": " ".join(words)}
                lines.append(json.dumps(edited, ensure_ascii=False))
        # Each file keeps its own edits, so files (batches) stay one size at every scale.
        (target / path.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (target / "DONE").touch()
    return target


def _measure(config: str, corpus: Path, out: Path, shards: int) -> None:
    """Inside the measured process: run the workflow, print its figures as one JSON line."""
    from gristmill import LocalExecutor
    from gristmill.stages.text.io import AddId, JsonlReader
    from gristmill.workflows import FuzzyDeduplicationWorkflow

    workflow = FuzzyDeduplicationWorkflow(
        [JsonlReader(str(corpus)), AddId()],
        str(out / "duplicates"),
        str(out / "cache"),
        num_shards=shards,
        **CONFIGS[config],  # type: ignore[arg-type]
    )
    found = workflow.run(LocalExecutor())
    steps = {k: round(v, 2) for k, v in workflow.timings.items()}
    print("RESULT " + json.dumps({"duplicates": found, "rounds": workflow.rounds, "steps": steps}))


def _run(config: str, corpus: Path, shards: int = 16) -> dict[str, object]:
    """One configuration in a fresh process: wall seconds, peak RSS (MB), its own figures."""
    out = CACHE / f"out-fuzzy-{config}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        config,
        "--corpus",
        str(corpus),
        "--out",
        str(out),
    ]
    cmd += ["--shards", str(shards)]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{config} failed with status {status}")
    [line] = [ln for ln in output.splitlines() if ln.startswith("RESULT ")]
    # ru_maxrss of a waited-for child covers it and the descendants it waited for.
    figures = json.loads(line[7:])
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, "shards": shards, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--scale", type=int, default=5, help="0 skips the memory-growth run")
    parser.add_argument("--configs", default="datatrove,nemo")
    parser.add_argument("--measure", choices=sorted(CONFIGS))
    parser.add_argument("--corpus")
    parser.add_argument("--out")
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args()
    if args.measure:  # inside a measured child process
        _measure(args.measure, Path(args.corpus), Path(args.out), args.shards)
        return
    from gristmill.stages.deduplication import minhash

    runs = []
    corpus = near_corpus(args.docs, args.files)
    for config in args.configs.split(","):
        runs.append((config, args.docs, corpus, _run(config, corpus)))
    if args.scale > 1:
        big = near_corpus(args.docs * args.scale, args.files * args.scale)
        runs.append(("datatrove", args.docs * args.scale, big, _run("datatrove", big)))
        # A shard task holds docs x bands / shards rows: shards that grow with the corpus
        # keep each task, and so the process, the same size.
        scaled = _run("datatrove", big, 16 * args.scale)
        runs.append(("datatrove", args.docs * args.scale, big, scaled))
    print(
        f"\n{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"MinHash kernel {'C' if minhash.native() else 'numpy (C kernel not built)'}\n"
    )
    print("| config | docs | shards | wall s | docs/s | signatures s | edges s "
          "| components s (rounds) | identify s | duplicates | peak RSS MB |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config, _, path, result in runs:
        total = sum(len(p.read_bytes().splitlines()) for p in path.glob("*.jsonl"))
        steps = result["steps"]
        assert isinstance(steps, dict)
        wall = float(result["wall_s"])  # type: ignore[arg-type]
        print(
            f"| {config} | {total:,} | {result['shards']} | {wall:.2f} | {total / wall:,.0f} "
            f"| {steps['signatures']} "
            f"| {steps['edges']} | {steps['components']} ({result['rounds']}) "
            f"| {steps['identify']} | {result['duplicates']:,} | {result['peak_mb']:,.0f} |"
        )
    for config, docs, _, result in runs:
        print(json.dumps({"bench": "fuzzy_dedup", "config": config, "docs": docs, **result}))


if __name__ == "__main__":
    main()
