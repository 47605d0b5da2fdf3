"""Language-independent cleanup: Unicode NFC, control characters, whitespace, punctuation spacing."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
_WHITESPACE_CHANGE = re.compile(r"\s\s|[^\S ]")  # a run of whitespace, or whitespace other than " "
# No space before closing punctuation, none after opening brackets.
_SPACE_BEFORE_CLOSE = re.compile(r"\s+([,.!?;:)\]}])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[{])\s+")
_REPEATED_COMMA = re.compile(r",{2,}")

# Fullwidth digits, letters and the symbols the number rules read (０-９, Ａ-Ｚ, ％, ～, ＄, ￦) -> ASCII.
# Fullwidth punctuation (，。！) is left alone: it is the writer's choice, not a number format.
FULLWIDTH_TO_ASCII = {
    cp: cp - 0xFEE0
    for cp in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B), 0xFF05, 0xFF5E, 0xFF04]
} | {0xFFE6: "₩"}

# Single-character unit symbols (CJK compatibility block) -> the letters the unit rules read.
UNIT_SYMBOLS = {
    "㎏": "kg", "㎎": "mg", "㎞": "km", "㎝": "cm", "㎜": "mm", "㎖": "ml", "ℓ": "L",
    "㎡": "m²", "㎥": "m³", "℃": "°C", "℉": "°F", "㎉": "kcal", "㎐": "Hz", "㎑": "kHz",
    "㎒": "MHz", "㎓": "GHz", "㎾": "kW", "㎧": "m/s",
}
_UNIT_SYMBOLS = re.compile("|".join(map(re.escape, UNIT_SYMBOLS)))
# Minus sign and hyphen look-alikes directly before a digit become ASCII "-".
_MINUS = re.compile(r"[\u2212\u2010\u2011\uFE63](?=\d)")


def _drop_control(ch: str) -> bool:
    cat = unicodedata.category(ch)
    # Cc: C0/C1 controls (tabs and newlines are whitespace and handled below);
    # Cf: invisible format characters (zero-width space, BOM, soft hyphen, bidi marks).
    return (cat == "Cc" and not ch.isspace()) or cat == "Cf"


def remove_control(text: str) -> str:
    """Remove control and invisible format characters (keeps tab/newline for the whitespace rule)."""
    if text.isprintable():
        return text
    return "".join(ch for ch in text if not _drop_control(ch))


def clean_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines, tabs, NBSP, ideographic space) to one space; strip."""
    if not _WHITESPACE_CHANGE.search(text) and not text[:1].isspace() and not text[-1:].isspace():
        return text  # only single plain spaces inside: nothing to do (the common case)
    return _WHITESPACE.sub(" ", text).strip()


# matches where one of the three rules below would: most texts need none of them
_PUNCTUATION_FIX = re.compile(r"\s[,.!?;:)\]}]|[(\[{]\s|,,")


def clean_punctuation(text: str) -> str:
    """No space before , . ! ? ; : ) ] }, none after ( [ {, and one comma for ",,"."""
    if not _PUNCTUATION_FIX.search(text):
        return text
    text = _SPACE_BEFORE_CLOSE.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    return _REPEATED_COMMA.sub(",", text)


def basic_cleanup(text: str) -> str:
    """NFC (decomposed Hangul jamo compose to syllables), control characters out, whitespace collapsed."""
    return clean_whitespace(remove_control(unicodedata.normalize("NFC", text)))


# any character that `ascii_forms` rewrites (all outside ASCII)
_NOT_ASCII_FORM = re.compile("[" + re.escape("".join(map(chr, FULLWIDTH_TO_ASCII)) + "".join(UNIT_SYMBOLS))
                             + "\u2212\u2010\u2011\uFE63]")


def ascii_forms(text: str) -> str:
    """Fullwidth ASCII, unit symbols (㎏, ℃) and minus look-alikes to the ASCII forms the rules read."""
    if text.isascii() or not _NOT_ASCII_FORM.search(text):
        return text
    text = text.translate(FULLWIDTH_TO_ASCII)
    text = _UNIT_SYMBOLS.sub(lambda m: UNIT_SYMBOLS[m.group()], text)
    return _MINUS.sub("-", text)
