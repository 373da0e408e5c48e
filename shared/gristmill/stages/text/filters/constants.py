"""The data the heuristic filters compare against, as NeMo Curator defines it (exact values)."""

from __future__ import annotations

import re

import regex

__all__ = [
    "BULLETS",
    "COMMON_ENGLISH_WORDS",
    "ELLIPSIS_MARKS",
    "END_MARKS",
    "POLICY_SUBSTRINGS",
    "WHITE_SPACE",
]

END_MARKS = (".", "?", "!", '"', "'")
ELLIPSIS_MARKS = (
    "...",
    "[...]",
    "\u2026",
    "(...)",
    "[\u2026]",
    "-\u00bb",
    "read more..",
    "read more",
)
# \b is BACKSPACE (U+0008) here, as in NeMo Curator; NBSP and other Unicode spaces do not count.
WHITE_SPACE = frozenset("\t\n\r\b ")
COMMON_ENGLISH_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = frozenset("\u2022\u2023\u2043\u204c\u204d\u2219\u25cb\u25cf\u25d8\u25e6\u29be\u29bf")
PARENTHESES = frozenset("{}\u27e8\u27e9[]()")
# Characters NonAlphaNumericFilter counts as "alphanumeric": ASCII letters and digits, LF, ?!,.
ALPHANUMERIC = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n?!,.")
DIGITS = frozenset("0123456789")

_COOKIE_NOTICES = (
    "this website uses cookies to improve your experience while you navigate through the website. "
    "out of these cookies, the cookies that are categorized as necessary are stored on your browser "
    "as they are essential for the working of basic functionalities of the website. we also use "
    "third-party cookies that help us analyze and understand how you use this website. these cookies "
    "will be stored in your browser only with your consent. you also have the option to opt-out of "
    "these cookies. but opting out of some of these cookies may have an effect on your browsing "
    "experience.",
    "necessary cookies are absolutely essential for the website to function properly. this category "
    "only includes cookies that ensures basic functionalities and security features of the website. "
    "these cookies do not store any personal information.",
    "any cookies that may not be particularly necessary for the website to function and is used "
    "specifically to collect user personal data via analytics, ads, other embedded contents are "
    "termed as non-necessary cookies. it is mandatory to procure user consent prior to running these "
    "cookies on your website.",
    "this site uses cookies, including for analytics, personalization, and advertising purposes. for "
    "more information or to change your cookie settings, click here.",
    "if you continue to browse this site without changing your cookie settings, you agree to this "
    "use. acceptread more",
)
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "privacy overview",
    "use of cookies",
    "use cookies",
    "privacy & cookies policy",
    "privacy and cookies policy",
    *_COOKIE_NOTICES,
)

# A URL as NeMo Curator's filters see one: the body stops at the first '/', ':', '?', '#', ...
URL_PATTERN = re.compile(
    r"http[s]?://(?:[a-zA-Z]|[0-9]|[$\-_@.&+]|[!*\(\),]|(?:%[0-9a-fA-F][0-9a-fA-F]))+"
)
HASH_RUNS = re.compile(r"#+")
# Unicode Alphabetic (letters, letter numbers, other alphabetic marks), as regex's [[:alpha:]].
ALPHA = regex.compile(r"[[:alpha:]]")
