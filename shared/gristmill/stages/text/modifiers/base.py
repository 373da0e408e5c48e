"""`DocumentModifier`: rewrites the text of a document."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from gristmill.stages.text.components import Component, ComponentRegistry

__all__ = ["MODIFIERS", "DocumentModifier"]


class DocumentModifier(Component, ABC):
    """Turns one document's text into new text. `modify_document` is the definition;
    `modify_column` may do a whole Arrow column at once and must give the same result."""

    _name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODIFIERS.add(cls)

    @property
    def name(self) -> str:
        """The modifier's name (the class name unless it sets `_name`)."""
        return self._name or type(self).__name__

    @abstractmethod
    def modify_document(self, text: str) -> str:
        """The new text of one document."""

    def modify_column(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The new texts of a column (default: `modify_document` on each)."""
        return pa.array([self.modify_document(t) for t in texts.to_pylist()], pa.string())


MODIFIERS = ComponentRegistry("modifier", DocumentModifier)  # type: ignore[type-abstract]
