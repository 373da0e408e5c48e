"""Where a model stage finds its files: a local directory, or a copy of a remote one.

A model is a directory (`tokenizer.json`, `config.json`, and `model.onnx` or a transformers
checkpoint) or a single `.onnx` file whose directory holds the rest. A local path is used where
it is. A URL (`s3://...`, any fsspec protocol) is copied once per machine into the model cache
(`GRISTMILL_MODEL_CACHE`, default `~/.cache/gristmill/models`) by `setup_on_node`; the copy is
made under a temporary name and renamed into place whole, so a worker killed half-way leaves
nothing another worker could take for a complete model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from gristmill.errors import ModelError

__all__ = ["model_cache_dir", "model_config", "model_dir", "model_file", "tokenizer_file"]


def model_cache_dir() -> Path:
    """Where copies of remote models are kept on this machine."""
    configured = os.environ.get("GRISTMILL_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "gristmill" / "models"


def model_dir(model_path: str) -> Path:
    """The local directory of the model at `model_path`, copying a remote one on first use."""
    fs, stripped = fsspec.core.url_to_fs(model_path)
    if isinstance(fs, LocalFileSystem):
        local = Path(stripped)
        if not local.exists():
            raise ModelError(f"model_path {model_path!r} does not exist")
        return local.parent if local.is_file() else local
    return _cached_copy(fs, stripped, model_path)


def _cached_copy(fs: fsspec.AbstractFileSystem, stripped: str, model_path: str) -> Path:
    key = hashlib.sha256(model_path.encode()).hexdigest()[:20]
    target = model_cache_dir() / key
    if target.is_dir():
        return target
    if not fs.exists(stripped):
        raise ModelError(f"model_path {model_path!r} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{key}.{uuid.uuid4().hex}.partial")
    try:
        if fs.isdir(stripped):
            files = [f for f in fs.find(stripped) if not fs.isdir(f)]
            for remote in files:
                local = partial / os.path.relpath(remote, stripped)
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
        else:
            partial.mkdir()
            fs.get_file(stripped, str(partial / Path(stripped).name))
        (partial / ".source").write_text(model_path)
        try:
            partial.rename(target)
        except OSError:  # another worker on this machine finished first: use its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def model_file(directory: Path, model_path: str, suffix: str = ".onnx") -> Path | None:
    """The model file: `model_path` itself when it names one, else `model<suffix>` in the
    directory, else the directory's only `*<suffix>`; None when there is none."""
    named = Path(model_path)
    if named.suffix == suffix and (directory / named.name).is_file():
        return directory / named.name
    default = directory / f"model{suffix}"
    if default.is_file():
        return default
    found = sorted(directory.glob(f"*{suffix}"))
    if len(found) > 1:
        raise ModelError(
            f"model_path {model_path!r} holds several {suffix} files "
            f"({', '.join(p.name for p in found)}); name one, or call it model{suffix}"
        )
    return found[0] if found else None


def tokenizer_file(directory: Path, model_path: str) -> Path:
    """The model's `tokenizer.json` (the `tokenizers` library's format)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ModelError(
            f"model_path {model_path!r} has no tokenizer.json; save the model's tokenizer "
            f"there (tokenizer.save('tokenizer.json') or AutoTokenizer.save_pretrained)"
        )
    return path


def model_config(directory: Path) -> dict[str, Any]:
    """The model's `config.json`, or {} when it has none."""
    path = directory / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: a JSON object was expected")
    return config
