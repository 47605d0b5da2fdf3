import unicodedata

import pytest

from indextts_ray.text import (
    TextConfig,
    canonical_language,
    detect_language,
    leftover_characters,
    normalize,
    normalize_with_config,
)
from indextts_ray.text.korean_numbers import native, sino
from tests.text.cases import ENGLISH, KOREAN


def test_table_sizes():
    assert len(KOREAN) >= 60 and len(ENGLISH) >= 20


@pytest.mark.parametrize(("text", "expected", "rule"), KOREAN, ids=[c[2] for c in KOREAN])
def test_korean(text, expected, rule):
    assert normalize(text, "ko") == expected


@pytest.mark.parametrize(("text", "expected", "rule"), ENGLISH, ids=[c[2] for c in ENGLISH])
def test_english(text, expected, rule):
    assert normalize(text, "en") == expected


@pytest.mark.parametrize(("text", "lang"), [(c[0], "ko") for c in KOREAN] + [(c[0], "en") for c in ENGLISH])
def test_idempotent(text, lang):
    once = normalize(text, lang)
    assert normalize(once, lang) == once


@pytest.mark.parametrize(("text", "expected", "rule"), KOREAN + ENGLISH, ids=[c[2] for c in KOREAN + ENGLISH])
def test_expected_outputs_need_no_change(text, expected, rule):
    lang = "en" if (text, expected, rule) in ENGLISH else "ko"
    assert normalize(expected, lang) == expected


def test_nfd_hangul_composes():
    nfd = unicodedata.normalize("NFD", "한국어 음성 합성")
    assert len(nfd) > len("한국어 음성 합성")
    assert normalize(nfd, "ko") == "한국어 음성 합성"
    assert normalize(unicodedata.normalize("NFD", "사과 3개"), None) == "사과 세 개"


@pytest.mark.parametrize("lang", ["ko", "en", "zh", "ja", None, "xx"])
@pytest.mark.parametrize("text", [
    "안녕하세요. 오늘 날씨가 정말 좋네요!",
    "Hello, how are you today?",
    "你好，世界。",
    "iPhone을 샀어요~",
    "",
])
def test_unchanged_text_is_byte_identical(text, lang):
    out = normalize(text, lang)
    assert out == text and out.encode("utf-8") == text.encode("utf-8")


def test_control_characters_and_whitespace():
    assert normalize("안녕\u200b하세요\x00\n\t반갑습니다\ufeff", "ko") == "안녕하세요 반갑습니다"
    assert normalize("  a\u00a0\u3000b  ", "xx") == "a b"


def test_pass_through_keeps_numbers():
    assert normalize("第3章  10:30", "zh") == "第3章 10:30"
    assert normalize("3개", "ja") == "3개"


def test_fullwidth_digits():
    assert normalize("１２３개", "ko") == "백이십삼 개"


@pytest.mark.parametrize(("text", "lang"), [
    ("안녕하세요", "ko"),
    ("AI 모델을 학습합니다", "ko"),
    ("Hello world", "en"),
    ("你好世界", "zh"),
    ("こんにちは世界", "ja"),
    ("12345 !?", "und"),
    (unicodedata.normalize("NFD", "한국어"), "ko"),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_canonical_language():
    assert canonical_language("ko-KR") == "ko" and canonical_language("Korean") == "ko"
    assert canonical_language("EN_us") == "en" and canonical_language(None) is None
    assert canonical_language("") is None


def test_language_none_detects():
    assert normalize("사과 3개", None) == "사과 세 개"
    assert normalize("I have 3 apples", None) == "I have three apples"


def test_sino_matches_num2words_where_conventional():
    from num2words import num2words

    for n in list(range(0, 2100)) + [10000, 11000, 12345, 100000, 1234567, 10**8, 10**8 + 10**7, 10**12]:
        assert sino(n) == num2words(n, lang="ko"), n


def test_native_numbers():
    assert [native(n) for n in (1, 2, 3, 4, 5, 10, 20, 21, 30, 99)] == [
        "한", "두", "세", "네", "다섯", "열", "스무", "스물한", "서른", "아흔아홉"]
    assert native(20, attributive=False) == "스물" and native(4, attributive=False) == "넷"
    with pytest.raises(ValueError):
        native(100)


def test_config_and_row_helper():
    cfg = TextConfig()
    r = normalize_with_config("사과 3개", None, cfg)
    assert (r.text, r.language, r.detected) == ("사과 세 개", "ko", True)
    r = normalize_with_config("사과 3개", "ko-KR", cfg)
    assert (r.text, r.language, r.detected) == ("사과 세 개", "ko", False)
    r = normalize_with_config("3 apples", None, TextConfig(default_language="en"))
    assert (r.text, r.language, r.detected) == ("three apples", "en", False)
    assert normalize_with_config("사과  3개", "ko", TextConfig(enabled=False)).text == "사과  3개"
    assert normalize_with_config("사과  3개", "ko", TextConfig(languages=["en"])).text == "사과 3개"


def test_config_rejects_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TextConfig(default_language="not a code")
    with pytest.raises(ValidationError):
        TextConfig(languages=["fr"])
    with pytest.raises(ValidationError):
        TextConfig(enabeld=True)


def test_leftover_characters():
    assert leftover_characters("사과 세 개, OK!") == {}
    assert leftover_characters("第3章 ♥♥") == {"第": 1, "3": 1, "章": 1, "♥": 2}


def test_idempotent_on_random_mixtures():
    """Texts glued from table inputs and awkward fragments: no crash, and a second pass changes nothing."""
    import random

    rng = random.Random(0)
    fragments = [c[0] for c in KOREAN + ENGLISH] + [
        "~", "-", "3-2", "24/7", ":", "%", "$", "제", "A", "I", "x86", "1.2.3", "12:60", "99:99", "0", " ,", "(",
        "12345678901234567890123", "３개", "ℓ", "\u200b", "\n", "３．５", "$$3", "--5", "1~~2",
    ]
    for _ in range(400):
        text = rng.choice(["", " ", ""]).join(rng.choice(fragments) for _ in range(rng.randint(1, 5)))
        for lang in ("ko", "en"):
            once = normalize(text, lang)
            assert normalize(once, lang) == once, (text, lang, once)


def test_korean_24_hour_clock_reads_sino_korean_hours():
    """Every hour of the clock: 1-12 native (세 시), 0 and 13-24 Sino-Korean (십오 시), written as HH:MM or 시/분."""
    from indextts_ray.text.korean_numbers import native, sino

    for h in range(25):
        spoken = native(h) if 1 <= h <= 12 else sino(h)
        for m in (0, 5, 30, 59):
            minutes = f" {sino(m)} 분" if m else ""
            assert normalize(f"{h:02d}:{m:02d}", "ko") == f"{spoken} 시{minutes}", (h, m)
            assert normalize(f"{h}:{m:02d}에 출발", "ko") == f"{spoken} 시{minutes}에 출발", (h, m)
            if m:
                assert normalize(f"{h}시 {m}분", "ko") == f"{spoken} 시 {sino(m)} 분", (h, m)
        assert normalize(f"오후 {h}시", "ko") == f"오후 {spoken} 시"
    assert normalize("23:59", "ko") == "이십삼 시 오십구 분"
    assert normalize("15시 30분", "ko") == "십오 시 삼십 분"
    assert normalize("3시간", "ko") == "세 시간" and normalize("15시간", "ko") == "열다섯 시간"  # durations stay native


def test_korean_alphanumeric_codes_read_korean_digit_names():
    """Every digit next to every capital (7B, B7) reads the Korean digit name, 0 as 공, never English."""
    from indextts_ray.text.korean import _UNIT_TOKEN, LETTER_NAMES

    names = "공일이삼사오육칠팔구"
    for d in range(10):
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            for code, spoken in ((f"{d}{letter}", names[d] + LETTER_NAMES[letter]),
                                 (f"{letter}{d}", LETTER_NAMES[letter] + names[d])):
                if not _UNIT_TOKEN.fullmatch(code):  # a number with a unit (5L, 3V, 2W): the unit rule's
                    assert normalize(f"{code} 모델", "ko") == f"{spoken} 모델", code
    assert normalize("7B 모델", "ko") == "칠비 모델"
    assert not any(w in normalize("5G 3D A4 MP3 H2O", "ko") for w in ("파이브", "쓰리", "포", "투", "세븐"))
