"""GPU benchmark for a lent GPU machine: model stages end to end against the raw model rate.

    python bench/gpu_models.py                 # on a GPU machine with onnxruntime-gpu
    python bench/gpu_models.py --smoke         # anywhere: tiny models on CPU, checks the script

Builds two BERT-shaped ONNX classifiers with random weights (speed does not depend on the
weights): DeBERTa-v3-base-shaped (vocab 128,100, 768 wide, 12 layers, 12 heads) and
MiniLM-L6-shaped (vocab 30,522, 384 wide, 6 layers, 12 heads). For each it measures

  raw        the model's forward rate: the same tokens, length-sorted and padded per batch,
             straight through one ONNX Runtime CUDA session (host-to-device copies included);
  local      `DistributedDataClassifier` on `LocalExecutor` (one process, one model);
  xenna-N    on `XennaExecutor`, the model stage pinned to N actors sharing the GPU
             (`gpus=1/N`), for N in 1, 2, 4;
  service-N  on the embedded service's GPU pool (one GPU worker, N actors of gpus=1/N).

and prints docs/s and the share of raw as a Markdown table, then JSON lines.
Target (issue 15): end to end >= 90% of raw. Needs `onnxruntime-gpu` (not `onnxruntime`) and
the `ray` and `service` extras; the whole run takes under 10 minutes on one H100.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gristmill import LocalExecutor, Pipeline
from gristmill.stages.text.classifiers import ClassifierModelStage
from gristmill.stages.text.io import JsonlReader
from gristmill.stages.text.models import TokenizerStage, pad_batch
from gristmill.stages.text.models.backends import Device, open_model
from gristmill.stages.text.models.synthetic import build_text_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from text_quality import generate  # noqa: E402

SHAPES = {
    "deberta-v3-base": {
        "vocab_size": 128_100,
        "hidden": 768,
        "layers": 12,
        "heads": 12,
        "intermediate": 3072,
    },
    "minilm-l6": {
        "vocab_size": 30_522,
        "hidden": 384,
        "layers": 6,
        "heads": 12,
        "intermediate": 1536,
    },
}
SMOKE = {"tiny": {"vocab_size": 3000, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}}
LABELS = ["High", "Medium", "Low"]


class PinnedModelStage(ClassifierModelStage):
    """The classifier's model stage with its number of actors fixed (for the N-actor runs)."""

    actors = 1

    def num_workers(self) -> int | None:
        return self.actors


def stages(model: Path, gpus: float, actors: int, batch: int, data: Path) -> list[Any]:
    model_stage = PinnedModelStage(
        str(model), labels=LABELS, model_inference_batch_size=batch, gpus=gpus
    ).with_(name="model")
    model_stage.actors = actors
    tokenizer = TokenizerStage(str(model), max_seq_length=512).with_(name="tokenizer")
    return [JsonlReader(str(data)), tokenizer, model_stage]


def raw_rate(model: Path, data: Path, batch: int, device: Device) -> tuple[float, int]:
    """Docs/s of the bare model over the corpus's tokens (sorted, padded per batch), through
    the same ONNX Runtime session settings the model stage uses."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.enable_truncation(512)
    texts = [
        json.loads(line)["text"]
        for path in sorted(data.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    sequences = sorted((np.array(e.ids) for e in tokenizer.encode_batch(texts)), key=len)
    forward = open_model(model, str(model), "onnx", device, autocast=True, threads=1)
    forward(*pad_batch(sequences[:batch], 0, "right"))  # warm up
    started = time.perf_counter()
    for start in range(0, len(sequences), batch):
        forward(*pad_batch(sequences[start : start + batch], 0, "right"))
    return len(texts) / (time.perf_counter() - started), len(texts)


def timed(pipeline: Pipeline, executor: Any, docs: int) -> float:
    started = time.perf_counter()
    outputs = pipeline.run(executor)
    elapsed = time.perf_counter() - started
    made = sum(t.num_items for t in outputs)
    if made != docs:
        raise SystemExit(f"{pipeline.name}: {made} documents out of {docs}")
    return docs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU")
    parser.add_argument("--skip", default="", help="comma-separated runs to leave out")
    args = parser.parse_args()
    import onnxruntime as ort

    device: Device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("onnxruntime has no CUDA provider: install onnxruntime-gpu")
    docs = 300 if args.smoke else args.docs
    data = generate(docs, 8)
    skip = set(filter(None, args.skip.split(",")))
    from gristmill.embedded import EmbeddedService
    from gristmill.executors.ray_cluster import ray_session
    from gristmill.executors.service import ServiceExecutor
    from gristmill.executors.xenna import XennaExecutor

    rows = []
    with tempfile.TemporaryDirectory() as tmp, ray_session(dashboard=True):
        shapes = SMOKE if args.smoke else SHAPES
        for name, shape in shapes.items():
            model = build_text_model(Path(tmp) / name, ["the", "of", "and"], labels=LABELS, **shape)
            raw, docs = raw_rate(model, data, args.batch, device)
            results: dict[str, float] = {"raw": raw}
            share = (lambda n: 0.0) if args.smoke else (lambda n: 1.0 / n)
            if "local" not in skip:
                pipe = Pipeline("local", stages(model, share(1), 1, args.batch, data))
                results["local"] = timed(pipe, LocalExecutor(), docs)
            counts = (1,) if args.smoke else (1, 2, 4)  # two CPU cores fit one model actor
            for n in counts:
                if f"xenna-{n}" not in skip:
                    pipe = Pipeline(f"xenna-{n}", stages(model, share(n), n, args.batch, data))
                    executor = XennaExecutor({"execution_mode": "streaming"})
                    results[f"xenna-{n}"] = timed(pipe, executor, docs)
            for n in counts:
                if f"service-{n}" in skip:
                    continue
                state = Path(tmp) / f"service-{name}-{n}"
                gpu_workers = 0 if args.smoke else 1
                with EmbeddedService(
                    state, workers=1, slots=n if args.smoke else 2, gpu_workers=gpu_workers,
                    gpu_slots=n, output_root=tmp, input_roots=(tmp, str(data)),
                ) as service:  # fmt: skip
                    pipe = Pipeline(f"service-{n}", stages(model, share(n), n, args.batch, data))
                    results[f"service-{n}"] = timed(pipe, ServiceExecutor(service.url), docs)
            rows.append({"model": name, "docs": docs, "device": device, "docs_per_s": results})
    print("| model | run | docs/s | of raw |\n| --- | --- | ---: | ---: |")
    for row in rows:
        raw = row["docs_per_s"]["raw"]
        for run, rate in row["docs_per_s"].items():
            print(f"| {row['model']} | {run} | {rate:,.0f} | {rate / raw:.0%} |")
    for row in rows:
        print(json.dumps(row))
    providers = ", ".join(ort.get_available_providers())
    print(f"onnxruntime {ort.__version__} ({providers}), pid {os.getpid()}")


if __name__ == "__main__":
    main()
