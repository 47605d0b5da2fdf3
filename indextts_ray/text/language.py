"""Language codes: canonical short codes and detection from the script."""

from __future__ import annotations

import functools
import re
import unicodedata

_ALIASES = {
    "kor": "ko", "korean": "ko", "eng": "en", "english": "en", "zho": "zh", "chi": "zh", "cmn": "zh",
    "yue": "zh", "chinese": "zh", "jpn": "ja", "japanese": "ja",
}
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


_SEPARATOR = re.compile(r"[-_]")


@functools.lru_cache(maxsize=1024)  # called twice per manifest row, with a handful of distinct values
def canonical_language(language: str | None) -> str | None:
    """Map a manifest language field to a short code ("ko-KR", "Korean", "KOR" → "ko"); None stays None."""
    if language is None or not language.strip():
        return None
    code = _SEPARATOR.split(language.strip().lower())[0]
    return _ALIASES.get(code, code)


def detect_language(text: str) -> str:
    """Guess the language from the script: "ko", "ja", "zh", "en", or "und" when there are no letters.

    Hangul and Han characters count three times a Latin letter (a syllable is about three letters),
    so Korean with English words is "ko"; any kana makes Han text Japanese.
    """
    t = unicodedata.normalize("NFC", text)
    hangul, kana, han, latin = (len(p.findall(t)) for p in (_HANGUL, _KANA, _HAN, _LATIN))
    if kana and kana + han > hangul:
        return "ja"
    scores = {"ko": 3 * hangul, "zh": 3 * han, "en": latin}
    best = max(scores, key=scores.get)  # ties go to the first: ko, then zh
    return best if scores[best] else "und"
