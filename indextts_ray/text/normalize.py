"""`normalize(text, language)`: the one entry point, dispatching to the per-language rules."""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

from indextts_ray.text.common import basic_cleanup, clean_punctuation, clean_whitespace
from indextts_ray.text.config import TextConfig
from indextts_ray.text.english import normalize_english
from indextts_ray.text.korean import normalize_korean
from indextts_ray.text.language import canonical_language, detect_language

RULES = {"ko": normalize_korean, "en": normalize_english}
# Languages that get punctuation spacing on top of the cleanup, without number rules
# (Chinese numbers are left to IndexTTS2's own front end).
_CLEANUP_ONLY = {"zh"}
# What `prepare` accepts by default (data.languages): the languages with rules or punctuation cleanup here.
KNOWN_LANGUAGES = frozenset(RULES) | frozenset(_CLEANUP_ONLY)


def normalize(text: str, language: str | None) -> str:
    """Return `text` in spoken form for `language`; text that needs no change comes back unchanged.

    Args:
        text: one transcript.
        language: "ko", "en", "zh" (aliases such as "ko-KR" or "korean" work), anything else is
            passed through with NFC + control-character + whitespace cleanup only; None detects it.
    """
    lang = canonical_language(language) or detect_language(text)
    out = basic_cleanup(text)
    rule = RULES.get(lang)
    if rule is not None:
        out = clean_punctuation(clean_whitespace(rule(out)))
    elif lang in _CLEANUP_ONLY:
        out = clean_punctuation(out)
    return text if out == text else out


class Normalized(NamedTuple):
    text: str
    language: str  # the language used: the row's, the config default, or the detected one
    detected: bool  # True when the language was detected from the script (counted in the prepare stats)


def normalize_with_config(text: str, language: str | None, cfg: TextConfig) -> Normalized:
    """Normalise one manifest row as the `data.text` config says (what `prepare` and the tokenizer call).

    Args:
        text: the transcript.
        language: the row's language field, or None.
        cfg: the `data.text` section.
    """
    lang = canonical_language(language) or canonical_language(cfg.default_language)
    detected = lang is None
    if lang is None:
        lang = detect_language(text)
    if not cfg.enabled:
        return Normalized(text, lang, detected)
    return Normalized(normalize(text, lang if lang in cfg.languages else "und"), lang, detected)


_EXPECTED = re.compile(r"[\s\uac00-\ud7a3A-Za-z.,!?;:'\"()\-~…]")


def leftover_characters(text: str) -> Counter:
    """Count the characters of normalised text that are not Hangul syllables, Latin letters or common
    punctuation: what still reaches the tokenizer raw (for the `prepare` stats)."""
    return Counter(_EXPECTED.sub("", text))  # what is left after deleting the expected characters
