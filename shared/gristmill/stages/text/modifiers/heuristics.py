"""The text modifiers NeMo Curator users know, with its patterns and defaults.

Each docstring says where gristmill decides differently from NeMo Curator and why.
"""

from __future__ import annotations

import re
from typing import Any

import ftfy
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.stages.text.filters.constants import POLICY_SUBSTRINGS
from gristmill.stages.text.modifiers.base import DocumentModifier

__all__ = [
    "BoilerPlateStringModifier",
    "LineRemover",
    "MarkdownRemover",
    "NewlineNormalizer",
    "QuotationRemover",
    "Slicer",
    "UnicodeReformatter",
    "UrlRemover",
]


class UnicodeReformatter(DocumentModifier):
    """Repairs mojibake and broken Unicode with ftfy, using NeMo Curator's settings: ftfy's
    defaults except no Unicode normalisation and no fixing of ligatures, character widths,
    curly quotes or line breaks (so meaningful characters survive). Any ftfy
    `TextFixerConfig` option may be given as a keyword."""

    _NEMO_DEFAULTS: dict[str, Any] = {  # noqa: RUF012 - read-only table
        "fix_latin_ligatures": False,
        "fix_character_width": False,
        "uncurl_quotes": False,
        "fix_line_breaks": False,
        "normalization": None,
        "explain": False,
    }

    def __init__(self, **options: Any):
        self.options = options
        self._config = ftfy.TextFixerConfig(**{**self._NEMO_DEFAULTS, **options})

    def get_params(self) -> dict[str, Any]:
        """The ftfy options given."""
        return dict(self.options)

    def modify_document(self, text: str) -> str:
        """`ftfy.fix_text` with this modifier's settings."""
        return str(ftfy.fix_text(text, config=self._config))


class NewlineNormalizer(DocumentModifier):
    """Collapses three or more newlines into two, then three or more CRLFs into two."""

    _LF = re.compile(r"(\n){3,}")
    _CRLF = re.compile(r"(\r\n){3,}")

    def modify_document(self, text: str) -> str:
        """The text with long newline runs shortened."""
        return self._CRLF.sub("\r\n\r\n", self._LF.sub("\n\n", text))

    def modify_column(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The same with Arrow's regex kernels (these patterns mean the same there)."""
        once = pc.replace_substring_regex(texts, r"\n{3,}", "\n\n")
        return pc.replace_substring_regex(once, r"(\r\n){3,}", "\r\n\r\n")


class UrlRemover(DocumentModifier):
    """Deletes URLs (`https?://` or `www.` up to the next whitespace, case-insensitive)."""

    _URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)

    def modify_document(self, text: str) -> str:
        """The text without URLs; the whitespace around them stays."""
        return self._URL.sub("", text)


class LineRemover(DocumentModifier):
    """Deletes every line exactly equal to one of `patterns` (no stripping, case-sensitive)."""

    def __init__(self, patterns: list[str]):
        self.patterns = list(patterns)
        self._patterns = frozenset(patterns)

    def modify_document(self, text: str) -> str:
        """The text without the matching lines."""
        return "\n".join(line for line in text.split("\n") if line not in self._patterns)


class MarkdownRemover(DocumentModifier):
    """Strips Markdown emphasis and links, line by line: **bold**, *italic*, _underline_ and
    __underline__ (not inside words, so snake_case survives), and [text](url).

    A link becomes its text. NeMo Curator keeps the URL and drops the text, which loses the
    words a reader saw; gristmill keeps what was readable.
    """

    _BOLD = re.compile(r"\*\*(.*?)\*\*")
    _ITALIC = re.compile(r"\*(.*?)\*")
    _UNDERLINE = re.compile(r"(?<!\w)(__?)(?=\S)(.+?)(?<=\S)\1(?!\w)")
    _LINK = re.compile(r"\[(.*?)\]\((.*?)\)")

    def modify_document(self, text: str) -> str:
        """The text without Markdown emphasis and link syntax."""
        out = []
        for line in text.split("\n"):
            line = self._BOLD.sub(r"\1", line)
            line = self._ITALIC.sub(r"\1", line)
            line = self._UNDERLINE.sub(r"\2", line)
            out.append(self._LINK.sub(r"\1", line))
        return "\n".join(out)


class QuotationRemover(DocumentModifier):
    """Removes one pair of double quotes wrapping the whole text: when the text (longer than
    two characters once stripped) starts and ends with '"', and either is one line or its
    first line does not itself end with '"'."""

    def modify_document(self, text: str) -> str:
        """The text without its wrapping quotes."""
        wrapped = len(text.strip()) > 2 and text[0] == '"' and text[-1] == '"'
        if wrapped and ("\n" not in text.strip() or not text.split("\n", 1)[0].endswith('"')):
            return text[1:-1]
        return text


class Slicer(DocumentModifier):
    """Keeps the part of the text between `left` and `right`.

    An int bound is a position (Python slice semantics); a str bound is found in the text,
    `left` at its first occurrence and `right` at its last, and included unless
    `include_left` / `include_right` is False. A str bound that is not found gives "". The
    result is stripped unless `strip` is False.
    """

    def __init__(
        self,
        left: int | str | None = 0,
        right: int | str | None = None,
        include_left: bool = True,
        include_right: bool = True,
        strip: bool = True,
    ):
        self.left, self.right = left, right
        self.include_left, self.include_right, self.strip = include_left, include_right, strip

    def modify_document(self, text: str) -> str:
        """The slice."""
        start: int = 0
        if isinstance(self.left, int):
            start = self.left
        elif isinstance(self.left, str):
            found = text.find(self.left)
            if found == -1:
                return ""
            start = found if self.include_left else found + len(self.left)
        end: int = len(text)
        if isinstance(self.right, int):
            end = self.right
        elif isinstance(self.right, str):
            found = text.rfind(self.right)
            if found == -1:
                return ""
            end = found + len(self.right) if self.include_right else found
        piece = text[start:end]
        return piece.strip() if self.strip else piece


class BoilerPlateStringModifier(DocumentModifier):
    """C4's paragraph cleaner: removes paragraphs (split on a blank line) that carry a policy or
    cookie notice when they form a block at the top and/or the bottom of the document.

    "lorem ipsum" anywhere empties the document. With `remove_if_at_top_or_bottom=False` any
    notice empties it. Notices elsewhere (in the middle), or in every paragraph, leave the text
    as it is. NeMo Curator accepts one block at the top *or* the bottom; a page with a cookie
    banner above and a policy footer below is the common case, so gristmill removes both.
    """

    _name = "boilerplate_string_ratio"

    def __init__(self, remove_if_at_top_or_bottom: bool = True):
        self.remove_if_at_top_or_bottom = remove_if_at_top_or_bottom

    def modify_document(self, text: str) -> str:
        """The text without its top and bottom boilerplate paragraphs."""
        parts = text.split("\n\n")
        marked: list[bool] = []
        for paragraph in parts:
            lowered = paragraph.strip().lower()
            if "lorem ipsum" in lowered:
                return ""
            hit = any(p in lowered for p in POLICY_SUBSTRINGS)
            if hit and not self.remove_if_at_top_or_bottom:
                return ""
            marked.append(hit)
        if not any(marked) or all(marked):
            return text
        top = next(i for i, m in enumerate(marked) if not m)
        bottom = len(marked) - next(i for i, m in enumerate(reversed(marked)) if not m)
        if any(marked[top:bottom]):  # a notice between kept paragraphs: not a header/footer
            return text
        return "\n\n".join(parts[top:bottom])
