"""`Modify`: applies modifiers to a text column of every document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from gristmill.stages.base import ProcessingStage
from gristmill.stages.text.modifiers.base import MODIFIERS, DocumentModifier
from gristmill.tasks import DocumentBatch

__all__ = ["Modify"]

ModifierLike = DocumentModifier | Callable[[str], str] | dict[str, Any]


def _name_of(fn: object) -> str:
    if isinstance(fn, DocumentModifier):
        return fn.name
    return str(getattr(fn, "__name__", "modifier_fn"))


class Modify(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Rewrites `input_fields` with `modifier_fn` (a `DocumentModifier`, a function of the text,
    spec data `{"modifier": "UrlRemover", "params": {}}`, or a list of these applied in order),
    into `output_fields` (default: in place). Removes no document: a modifier that empties a
    text leaves an empty document for a later filter to judge.
    """

    def __init__(
        self,
        modifier_fn: ModifierLike | list[ModifierLike],
        input_fields: str = "text",
        output_fields: str | None = None,
    ):
        chain = modifier_fn if isinstance(modifier_fn, list) else [modifier_fn]
        if not chain:
            raise ValueError("Modify needs at least one modifier")
        self.modifiers = [MODIFIERS.from_spec(m) if isinstance(m, dict) else m for m in chain]
        self.modifier_fn = modifier_fn
        self.input_fields = input_fields
        self.output_fields = output_fields
        names = [_name_of(m) for m in self.modifiers]
        self.name = names[0] if len(names) == 1 else "modifier_chain_of_" + "_".join(names)

    def inputs(self) -> tuple[list[str], list[str]]:
        """The column read."""
        return [], [self.input_fields]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The column written."""
        return [], [self.output_fields or self.input_fields]

    def get_params(self) -> dict[str, Any]:
        """As the constructor's, with modifiers as spec data (functions cannot be in specs)."""
        params = super().get_params()
        specs = [
            MODIFIERS.to_spec(m) if isinstance(m, DocumentModifier) else m for m in self.modifiers
        ]
        params["modifier_fn"] = specs if isinstance(self.modifier_fn, list) else specs[0]
        return params

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with its text rewritten."""
        table = task.to_pyarrow()
        texts: pa.Array | pa.ChunkedArray = table.column(self.input_fields)
        for modifier in self.modifiers:
            if isinstance(modifier, DocumentModifier):
                texts = modifier.modify_column(texts)
            else:
                texts = pa.array([modifier(t) for t in texts.to_pylist()], pa.string())
        target = self.output_fields or self.input_fields
        if target in table.column_names:
            table = table.set_column(table.column_names.index(target), target, texts)
        else:
            table = table.append_column(target, texts)
        return DocumentBatch(data=table)
