"""Document modifiers and the `Modify` stage that applies them."""

from gristmill.stages.text.modifiers.base import DocumentModifier
from gristmill.stages.text.modifiers.heuristics import (
    BoilerPlateStringModifier,
    LineRemover,
    MarkdownRemover,
    NewlineNormalizer,
    QuotationRemover,
    Slicer,
    UnicodeReformatter,
    UrlRemover,
)
from gristmill.stages.text.modifiers.modify import Modify

__all__ = [
    "BoilerPlateStringModifier",
    "DocumentModifier",
    "LineRemover",
    "MarkdownRemover",
    "Modify",
    "NewlineNormalizer",
    "QuotationRemover",
    "Slicer",
    "UnicodeReformatter",
    "UrlRemover",
]
