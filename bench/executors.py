"""Benchmark: the text filter pipeline on every executor, on the text_quality corpus.

    .venv/bin/python bench/executors.py [--docs 100000] [--files 16]

For each executor, in a fresh process: start Ray (timed), run the pipeline of
`bench/text_quality.py` (JsonlReader -> WordCount -> NonAlphaNumeric -> RepeatingTopNGrams(2) ->
ParquetWriter) over the corpus once and over three copies of it (best of two runs each), stop
Ray (timed). Steady-state
docs/s is the marginal rate between the two runs, 2N / (t(3N) - t(N)), which cancels each
executor's fixed cost (actor start-up, planning). Peak memory is the largest PSS (proportional
set size, so Ray's shared object store is not counted twice) of the whole process tree, sampled
once a second during a separate run over the corpus (Ray's own processes included).

Targets (issue 4): Ray start + stop <= 5 s; steady-state docs/s of each Ray executor >= 80% of
LocalExecutor's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import text_quality  # noqa: E402

EXECUTORS = ("local", "xenna-streaming", "xenna-batch", "ray-data")


class TreeMemory:
    """Samples the PSS of this process (unless `include_root` is False) and all its
    descendants; keeps the peak."""

    def __init__(self, interval: float = 1.0, include_root: bool = True):
        self.peak = 0
        self.include_root = include_root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        root = psutil.Process()
        while not self._stop.is_set():
            total = 0
            tree = root.children(recursive=True)
            for proc in [root, *tree] if self.include_root else tree:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _executor(name: str):  # type: ignore[no-untyped-def]
    from gristmill import LocalExecutor
    from gristmill.executors.ray_data import RayDataExecutor
    from gristmill.executors.xenna import XennaExecutor

    return {
        "local": lambda: LocalExecutor(),
        "xenna-streaming": lambda: XennaExecutor({"execution_mode": "streaming"}),
        "xenna-batch": lambda: XennaExecutor({"execution_mode": "batch"}),
        "ray-data": lambda: RayDataExecutor(),
    }[name]()


def _run_once(name: str, inputs: list[str], out: Path) -> float:
    from gristmill import Pipeline
    from gristmill.stages.text.io import JsonlReader, ParquetWriter

    shutil.rmtree(out, ignore_errors=True)
    stages = [JsonlReader(inputs), *text_quality._filters(), ParquetWriter(str(out))]
    started = time.perf_counter()
    Pipeline(f"bench-{name}", stages).run(_executor(name))
    return time.perf_counter() - started


def measure(name: str, corpus: Path, copies: Path, out: Path) -> dict[str, float]:
    """One executor's figures (run inside its own process)."""
    import contextlib

    from gristmill.executors.ray_cluster import ray_session

    single = sorted(str(p) for p in corpus.glob("*.jsonl"))
    triple = sorted(str(p) for p in copies.glob("*.jsonl"))
    session = ray_session(dashboard=name.startswith("xenna")) if name != "local" else None
    with session if session is not None else contextlib.nullcontext() as ray_info:
        _run_once(name, single[:2], out / "warm-up")  # imports, worker start-up, caches
        once = min(_run_once(name, single, out / "once") for _ in range(2))
        thrice = min(_run_once(name, triple, out / "thrice") for _ in range(2))
        # Memory in a run of its own: sampling every process's PSS costs CPU, and timings
        # taken while it runs would be slower than the truth on a two-core machine.
        with TreeMemory() as memory:
            _run_once(name, single, out / "memory")
    return {
        "start_s": ray_info.start_seconds if ray_info else 0.0,
        "stop_s": ray_info.stop_seconds if ray_info else 0.0,
        "once_s": once,
        "thrice_s": thrice,
        "peak_mb": memory.peak / 1e6,
    }


def _copies(corpus: Path) -> Path:
    target = corpus.parent / (corpus.name + "-x3")
    if not (target / "DONE").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for copy in range(3):
            for path in corpus.glob("*.jsonl"):
                (target / f"c{copy}-{path.name}").symlink_to(path)
        (target / "DONE").touch()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--executor", choices=EXECUTORS)
    parser.add_argument("--corpus")
    args = parser.parse_args()
    if args.executor:  # the measured child
        corpus = Path(args.corpus)
        out = text_quality.CACHE / f"out-exec-{args.executor}"
        print(json.dumps(measure(args.executor, corpus, _copies(corpus), out)))
        return
    corpus = text_quality.generate(args.docs, args.files)
    _copies(corpus)
    for path in corpus.glob("*.jsonl"):  # every executor starts with the corpus in page cache
        path.read_bytes()
    results = {}
    for name in EXECUTORS:
        cmd = [sys.executable, __file__, "--executor", name, "--corpus", str(corpus)]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    local_rate = 2 * args.docs / (results["local"]["thrice_s"] - results["local"]["once_s"])
    print(f"\n{args.docs:,} documents per run ({args.files} files); {os.cpu_count()} cores\n")
    header = "executor | Ray start s | Ray stop s | run 1x s | run 3x s | steady docs/s | vs local"
    print(f"| {header} | peak PSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        rate = 2 * args.docs / (r["thrice_s"] - r["once_s"])
        print(
            f"| {name} | {r['start_s']:.1f} | {r['stop_s']:.1f} | {r['once_s']:.1f} "
            f"| {r['thrice_s']:.1f} | {rate:,.0f} | {rate / local_rate:.0%} | {r['peak_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
