"""Document filters and the stages that apply them.

`ScoreFilter(WordCountFilter(min_words=50))` keeps the documents a filter accepts and records
why it dropped the others. The heuristic filters follow NeMo Curator's names, parameters,
defaults and scores; each docstring says where gristmill decides what NeMo leaves open.
"""

from gristmill.stages.text.filters.base import DocumentFilter
from gristmill.stages.text.filters.characters import (
    BoilerPlateStringFilter,
    NonAlphaNumericFilter,
    NumbersFilter,
    ParenthesesFilter,
    PornographicUrlsFilter,
    SubstringFilter,
    UrlsFilter,
    WhiteSpaceFilter,
)
from gristmill.stages.text.filters.lines import BulletsFilter, EllipsisFilter, PunctuationFilter
from gristmill.stages.text.filters.models import FastTextLangId, LabelFilter
from gristmill.stages.text.filters.repetition import (
    RepeatedLinesByCharFilter,
    RepeatedLinesFilter,
    RepeatedParagraphsByCharFilter,
    RepeatedParagraphsFilter,
    RepeatingDuplicateNGramsFilter,
    RepeatingTopNGramsFilter,
)
from gristmill.stages.text.filters.stages import Filter, Score, ScoreFilter
from gristmill.stages.text.filters.words import (
    CommonEnglishWordsFilter,
    LongWordFilter,
    MeanWordLengthFilter,
    SymbolsToWordsFilter,
    WordCountFilter,
    WordsWithoutAlphabetsFilter,
)

__all__ = [
    "BoilerPlateStringFilter",
    "BulletsFilter",
    "CommonEnglishWordsFilter",
    "DocumentFilter",
    "EllipsisFilter",
    "FastTextLangId",
    "Filter",
    "LabelFilter",
    "LongWordFilter",
    "MeanWordLengthFilter",
    "NonAlphaNumericFilter",
    "NumbersFilter",
    "ParenthesesFilter",
    "PornographicUrlsFilter",
    "PunctuationFilter",
    "RepeatedLinesByCharFilter",
    "RepeatedLinesFilter",
    "RepeatedParagraphsByCharFilter",
    "RepeatedParagraphsFilter",
    "RepeatingDuplicateNGramsFilter",
    "RepeatingTopNGramsFilter",
    "Score",
    "ScoreFilter",
    "SubstringFilter",
    "SymbolsToWordsFilter",
    "UrlsFilter",
    "WhiteSpaceFilter",
    "WordCountFilter",
    "WordsWithoutAlphabetsFilter",
]
