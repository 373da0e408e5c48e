"""How the filters cut text into words, lines, paragraphs and n-grams (NeMo Curator's rules).

Words are `str.split()`: runs of non-whitespace, whitespace as `str.isspace()` defines it.
Lines are the pieces between "\\n" that are not blank, kept unstripped. Paragraphs are the
pieces between "\\n\\n", exactly (three newlines give a paragraph starting with "\\n").
"""

from __future__ import annotations

__all__ = ["lines", "ngrams", "paragraphs", "words"]


def words(text: str) -> list[str]:
    """The words of `text`."""
    return text.split()


def lines(text: str) -> list[str]:
    """The non-blank lines of `text`, unstripped."""
    return [line for line in text.split("\n") if line.strip()]


def paragraphs(text: str) -> list[str]:
    """The paragraphs of `text` (always at least one, possibly empty)."""
    return text.split("\n\n")


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """Every run of `n` consecutive tokens, overlapping, in order."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
