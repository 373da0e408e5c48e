"""Ready-made stage lists.

`quality_filters()` is the C4/Gopher-style heuristic set NeMo Curator recommends for English web
text (its `heuristic_filter_english_pipeline.yaml`): the same 28 filters, thresholds and order,
each its own `ScoreFilter`, so a document rejected early is never scored by later filters.
"""

from __future__ import annotations

from gristmill.stages.text.filters import (
    BoilerPlateStringFilter,
    BulletsFilter,
    CommonEnglishWordsFilter,
    DocumentFilter,
    EllipsisFilter,
    LongWordFilter,
    MeanWordLengthFilter,
    NonAlphaNumericFilter,
    NumbersFilter,
    ParenthesesFilter,
    PunctuationFilter,
    RepeatedLinesByCharFilter,
    RepeatedLinesFilter,
    RepeatedParagraphsByCharFilter,
    RepeatedParagraphsFilter,
    RepeatingDuplicateNGramsFilter,
    RepeatingTopNGramsFilter,
    ScoreFilter,
    SymbolsToWordsFilter,
    UrlsFilter,
    WhiteSpaceFilter,
    WordCountFilter,
    WordsWithoutAlphabetsFilter,
)

__all__ = ["quality_filter_objects", "quality_filters"]

# Filters that assume English (Latin letters, English stop words); left out for other languages.
_ENGLISH_ONLY = (NonAlphaNumericFilter, WordsWithoutAlphabetsFilter, CommonEnglishWordsFilter)


def quality_filter_objects(lang: str = "en") -> list[DocumentFilter]:
    """The preset's filters, in order; for `lang` other than "en", without the three that
    assume English (as NeMo Curator's non-English preset)."""
    filters: list[DocumentFilter] = [
        NonAlphaNumericFilter(max_non_alpha_numeric_to_text_ratio=0.25),
        SymbolsToWordsFilter(max_symbol_to_word_ratio=0.1),
        NumbersFilter(max_number_to_text_ratio=0.15),
        UrlsFilter(max_url_to_text_ratio=0.2),
        WhiteSpaceFilter(max_white_space_ratio=0.25),
        ParenthesesFilter(max_parentheses_ratio=0.1),
        BoilerPlateStringFilter(remove_if_at_top_or_bottom=True, max_boilerplate_string_ratio=0.4),
        RepeatedLinesFilter(max_repeated_line_fraction=0.7),
        RepeatedParagraphsFilter(max_repeated_paragraphs_ratio=0.7),
        RepeatedLinesByCharFilter(max_repeated_lines_char_ratio=0.8),
        RepeatedParagraphsByCharFilter(max_repeated_paragraphs_char_ratio=0.8),
        WordCountFilter(min_words=50, max_words=100000),
        PunctuationFilter(max_num_sentences_without_endmark_ratio=0.85),
        WordsWithoutAlphabetsFilter(min_words_with_alphabets=0.8),
        CommonEnglishWordsFilter(min_num_common_words=2, stop_at_false=True),
        MeanWordLengthFilter(min_mean_word_length=3, max_mean_word_length=10),
        LongWordFilter(max_word_length=1000),
        EllipsisFilter(max_num_lines_ending_with_ellipsis_ratio=0.3),
        RepeatingTopNGramsFilter(n=2, max_repeating_ngram_ratio=0.2),
        RepeatingTopNGramsFilter(n=3, max_repeating_ngram_ratio=0.18),
        RepeatingTopNGramsFilter(n=4, max_repeating_ngram_ratio=0.16),
        RepeatingDuplicateNGramsFilter(n=5, max_repeating_duplicate_ngram_ratio=0.15),
        RepeatingDuplicateNGramsFilter(n=6, max_repeating_duplicate_ngram_ratio=0.14),
        RepeatingDuplicateNGramsFilter(n=7, max_repeating_duplicate_ngram_ratio=0.13),
        RepeatingDuplicateNGramsFilter(n=8, max_repeating_duplicate_ngram_ratio=0.12),
        RepeatingDuplicateNGramsFilter(n=9, max_repeating_duplicate_ngram_ratio=0.11),
        RepeatingDuplicateNGramsFilter(n=10, max_repeating_duplicate_ngram_ratio=0.10),
        BulletsFilter(max_bullet_lines_ratio=0.9),
    ]
    if lang.lower() != "en":
        filters = [f for f in filters if not isinstance(f, _ENGLISH_ONLY)]
    return filters


def quality_filters(
    lang: str = "en", text_field: str = "text", id_field: str = "id"
) -> list[ScoreFilter]:
    """The preset as stages: one `ScoreFilter` per filter, in order."""
    return [
        ScoreFilter(f, text_field=text_field, id_field=id_field)
        for f in quality_filter_objects(lang)
    ]
