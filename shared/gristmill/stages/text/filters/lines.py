"""Filters on the non-blank lines of a document. A document without lines scores 1.0."""

from __future__ import annotations

from gristmill.stages.text.filters.constants import BULLETS, ELLIPSIS_MARKS, END_MARKS
from gristmill.stages.text.filters.text_utils import lines
from gristmill.stages.text.filters.thresholds import AtMost

__all__ = ["BulletsFilter", "EllipsisFilter", "PunctuationFilter"]


class BulletsFilter(AtMost):
    """Keeps documents where at most `max_bullet_lines_ratio` of the lines start (after leading
    whitespace) with one of the bullet characters in `constants.BULLETS`."""

    _name = "bullet_ratio"

    def __init__(self, max_bullet_lines_ratio: float = 0.9):
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.limit = max_bullet_lines_ratio

    def score_document(self, text: str) -> float:
        """Bullet lines / lines."""
        found = lines(text)
        if not found:
            return 1.0
        return sum(1 for line in found if line.strip()[:1] in BULLETS) / len(found)


class PunctuationFilter(AtMost):
    """Keeps documents where at most `max_num_sentences_without_endmark_ratio` of the lines end
    without one of . ? ! " ' (after trailing whitespace)."""

    _name = "punctuation"

    def __init__(self, max_num_sentences_without_endmark_ratio: float = 0.85):
        self.max_num_sentences_without_endmark_ratio = max_num_sentences_without_endmark_ratio
        self.limit = max_num_sentences_without_endmark_ratio

    def score_document(self, text: str) -> float:
        """Lines without an end mark / lines."""
        found = lines(text)
        if not found:
            return 1.0
        return sum(1 for line in found if not line.strip().endswith(END_MARKS)) / len(found)


class EllipsisFilter(AtMost):
    """Keeps documents where at most `max_num_lines_ending_with_ellipsis_ratio` of the lines end
    with an ellipsis ("...", "…", "[...]", "read more", ...; case-insensitive)."""

    _name = "ellipsis"

    def __init__(self, max_num_lines_ending_with_ellipsis_ratio: float = 0.3):
        self.max_num_lines_ending_with_ellipsis_ratio = max_num_lines_ending_with_ellipsis_ratio
        self.limit = max_num_lines_ending_with_ellipsis_ratio

    def score_document(self, text: str) -> float:
        """Lines ending in an ellipsis / lines."""
        found = lines(text)
        if not found:
            return 1.0
        ending = sum(1 for line in found if line.strip().lower().endswith(ELLIPSIS_MARKS))
        return ending / len(found)
