"""Benchmark: does length sorting pay? A classifier's tokenizer + model on CPU, sorted or not.

    .venv/bin/python bench/model_length_sort.py [--copies 3] [--hidden 128] [--layers 4]

Runs `DistributedDataClassifier` (its `TokenizerStage` and model stage, ONNX Runtime on CPU) on
`LocalExecutor` over the sample corpus (`examples/data`: real documents from a one-line caption
to 430 words, plus junk pages), `--copies` times over, one task per file, with
`sort_by_length=True` and `False`. The model is a BERT-shaped encoder with random weights built
here (`gristmill.stages.text.models.synthetic`), `--hidden` wide and `--layers` deep, 512 tokens
at most, inference batches of `--batch` rows. Prints docs/s, the padding (tokens the model ran
over per real token) and the speed-up, as a Markdown table and then as JSON lines. Both runs
must predict the same labels in the same order (checked).
Target (issue 15): sorting is measurably faster on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from gristmill import LocalExecutor, Pipeline
from gristmill.stages.text.classifiers import DistributedDataClassifier
from gristmill.stages.text.io import JsonlReader
from gristmill.stages.text.models import TokenizerStage
from gristmill.stages.text.models.synthetic import build_text_model

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data"


def corpus(target: Path, copies: int) -> list[str]:
    """The sample corpus written `copies` times (new ids), one file per part and copy."""
    texts = []
    for copy in range(copies):
        for path in sorted(SAMPLE.glob("*.jsonl")):
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            out = target / f"{copy}-{path.name}"
            rows = [{"id": f"{copy}-{d['id']}", "text": d["text"]} for d in lines]
            out.write_text("".join(json.dumps(row) + "\n" for row in rows))
            texts.extend(d["text"] for d in lines)
    return texts


def padding(model: Path, data: Path, batch: int, sort: bool) -> float:
    """Tokens the model runs over per real token, with this batch size and sorting."""
    stage = TokenizerStage(str(model), max_seq_length=512, sort_by_length=sort)
    ran = real = 0
    for task in Pipeline("tok", [JsonlReader(str(data)), stage]).run(LocalExecutor()):
        lengths = [len(ids) for ids in task.to_pyarrow()["_gm_input_ids"].to_pylist()]
        for start in range(0, len(lengths), batch):
            chunk = lengths[start : start + batch]
            ran += max(chunk) * len(chunk)
            real += sum(chunk)
    return ran / real


def run(model: Path, data: Path, batch: int, sort: bool) -> tuple[float, list[str]]:
    stage = DistributedDataClassifier(
        str(model), sort_by_length=sort, model_inference_batch_size=batch, max_seq_length=512
    )
    pipeline = Pipeline("classify", [JsonlReader(str(data)), stage])
    started = time.perf_counter()
    outputs = pipeline.run(LocalExecutor())
    elapsed = time.perf_counter() - started
    tables = sorted((t.to_pyarrow() for t in outputs), key=lambda t: t["id"][0].as_py())
    table = pa.concat_tables(tables)
    return elapsed, table["preds"].to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        texts = corpus(data, args.copies)
        words = sorted({w.lower() for t in texts for w in t.split()})
        model = build_text_model(
            Path(tmp) / "model",
            words,
            hidden=args.hidden,
            layers=args.layers,
            heads=max(1, args.hidden // 64),
            calibration_texts=texts[:400],
        )
        results = []
        labels: dict[bool, list[str]] = {}
        for sort in (False, True):
            times = []
            for _ in range(args.repeat):
                elapsed, labels[sort] = run(model, data, args.batch, sort)
                times.append(elapsed)
            results.append(
                {
                    "sort_by_length": sort,
                    "docs": len(texts),
                    "docs_per_s": [round(len(texts) / t, 1) for t in times],
                    "padding": round(padding(model, data, args.batch, sort), 3),
                }
            )
        if labels[True] != labels[False]:
            sys.exit("sorted and unsorted runs predicted different labels")
    best = {r["sort_by_length"]: max(r["docs_per_s"]) for r in results}
    shape = f"hidden {args.hidden} x {args.layers} layers, batch {args.batch}"
    print(f"{platform.machine()}, {len(texts)} docs, {shape}\n")
    print("| sort_by_length | docs/s (runs) | tokens run per real token |\n| --- | ---: | ---: |")
    for r in results:
        runs = ", ".join(f"{x:,.0f}" for x in r["docs_per_s"])
        print(f"| {r['sort_by_length']} | {runs} | {r['padding']:.2f} |")
    print(f"\nspeed-up from sorting: {best[True] / best[False]:.2f}x (best runs)\n")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
