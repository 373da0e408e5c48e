"""The engines that run a model stage's forward pass: ONNX Runtime, or PyTorch + transformers.

Both take padded `input_ids` and `attention_mask` (int64, [batch, tokens]) and give the model's
first output as float32 numpy. ONNX Runtime is the default: CPU everywhere, CUDA where the
`onnxruntime-gpu` build is installed. PyTorch is the optional `torch` extra, for checkpoints not
exported to ONNX, with bf16 autocast on a GPU.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from gristmill.errors import ModelError
from gristmill.stages.text.models.files import model_file

__all__ = ["Backend", "Device", "ForwardPass", "open_model"]

Backend = Literal["auto", "onnx", "torch"]
Device = Literal["cpu", "cuda"]


class ForwardPass(Protocol):
    """A loaded model."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The model's first output for one padded batch, as float32."""
        ...


def open_model(
    directory: Path,
    model_path: str,
    backend: Backend,
    device: Device,
    autocast: bool,
    threads: int,
    head: str = "sequence_classification",
) -> ForwardPass:
    """Load the model in `directory` with `backend` ("auto": ONNX when there is a `.onnx` file,
    else PyTorch) on `device`. `head` picks the transformers class for PyTorch checkpoints
    (`sequence_classification` or `base` for hidden states)."""
    onnx_file = model_file(directory, model_path) if backend != "torch" else None
    if backend == "onnx" and onnx_file is None:
        raise ModelError(f"model_path {model_path!r} has no .onnx file for backend='onnx'")
    if onnx_file is not None:
        return _OnnxModel(onnx_file, device, threads)
    if backend == "auto" and not (directory / "config.json").is_file():
        raise ModelError(
            f"model_path {model_path!r} holds neither a model.onnx nor a transformers "
            f"checkpoint (config.json and weights)"
        )
    return _TorchModel(directory, model_path, device, autocast, head)


def _require(module: str, extra: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"{why} needs the '{module}' package: pip install 'gristmill[{extra}]'"
        ) from exc


class _OnnxModel:
    """An ONNX Runtime session, fed the inputs its graph declares."""

    def __init__(self, path: Path, device: Device, threads: int):
        ort = _require("onnxruntime", "models", "the ONNX back end")
        options = ort.SessionOptions()
        # Several actors share a machine: each uses the cores it asked for, not all of them.
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # its errors reach the caller as exceptions
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError(
                    f"{path}: the stage asks for a GPU but this onnxruntime has no CUDA "
                    f"provider (available: {', '.join(ort.get_available_providers())}); "
                    f"install onnxruntime-gpu in place of onnxruntime"
                )
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]
        known = {"input_ids", "attention_mask", "token_type_ids"}
        unknown = [name for name in self.inputs if name not in known]
        if unknown or "input_ids" not in self.inputs:
            raise ModelError(
                f"{path}: a text model takes input_ids (and optionally attention_mask, "
                f"token_type_ids); this graph takes {', '.join(self.inputs)}"
            )

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        outputs = self.session.run(None, {name: feeds[name] for name in self.inputs})
        return np.asarray(outputs[0], dtype=np.float32)


class _TorchModel:
    """A transformers checkpoint under PyTorch, in eval mode, bf16 autocast on a GPU if asked."""

    def __init__(self, directory: Path, model_path: str, device: Device, autocast: bool, head: str):
        self.torch = _require("torch", "torch", f"model_path {model_path!r} (a PyTorch checkpoint)")
        transformers = _require("transformers", "torch", "the PyTorch back end")
        if device == "cuda" and not self.torch.cuda.is_available():
            raise ModelError(
                f"model_path {model_path!r}: the stage asks for a GPU; torch sees none"
            )
        cls = (
            transformers.AutoModelForSequenceClassification
            if head == "sequence_classification"
            else transformers.AutoModel
        )
        try:
            model = cls.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"model_path {model_path!r}: transformers cannot load it: {exc}"
            ) from exc
        self.model = model.to(device).eval()
        self.device = device
        self.autocast = autocast and device == "cuda"
        self.head = head

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.autocast),
        ):
            out = self.model(input_ids=ids, attention_mask=mask)
        first = out.logits if self.head == "sequence_classification" else out.last_hidden_state
        return np.asarray(first.float().cpu().numpy(), dtype=np.float32)
