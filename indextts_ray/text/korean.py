"""Korean normalisation: numbers, dates, times, phone numbers, units and Latin acronyms to spoken Hangul.

Which number system a number is read in depends on what follows it:

    2026년 11월 28일   -> 이천이십육 년 십일 월 이십팔 일     Sino-Korean: 년 월 일 원 분 초 층 번지 호 회 ...
    3개, 20살, 1시     -> 세 개, 스무 살, 한 시              native Korean: 개 명 살 시 시간 마리 번 잔 ...
    15시 30분, 23:59   -> 십오 시 삼십 분, 이십삼 시 오십구 분   hours 13-24 (and 0) in Sino-Korean: a 24-hour clock
    6월, 10월          -> 유월, 시월                         the standard irregular month names
    010-1234-5678     -> 공일공 일이삼사 오육칠팔            digit by digit, 0 as 공
    10:30             -> 열 시 삼십 분
    3.5kg, -5°C, 50%  -> 삼 점 오 킬로그램, 영하 오 도, 오십 퍼센트
    3~5개             -> 세 개에서 다섯 개                   the unit is repeated on both ends
    1,234,567원       -> 백이십삼만 사천오백육십칠 원
    AI, KBS, 5G, 7B   -> 에이아이, 케이비에스, 오지, 칠비      codes: letter names + Korean digit names

Documented choices: native numbers only for 1-99 (123개 -> 백이십삼 개, as news readers do); a number
before 대 is Sino-Korean when it is a multiple of ten (20대 -> 이십 대, the age decade) or followed by
another number (2대 1 -> 이 대 일, a score); 번 is native (세 번) except before 출구/버스/선/... (삼 번 출구);
a written range reads "A 단위에서 B 단위"; Latin words with lowercase letters are kept as written.
"""

from __future__ import annotations

import re

from indextts_ray.text.common import ascii_forms
from indextts_ray.text.korean_numbers import decimal, digits, native, sino

# --- counters and units --------------------------------------------------------------------------

NATIVE_COUNTERS = (
    "개 명 살 시 시간 마리 번 번째 잔 권 병 대 그루 장 채 벌 켤레 척 송이 가지 군데 곳 달 사람 통 자루 "
    "포기 봉지 상자 그릇 접시 알 줄 칸 쌍 바퀴 걸음 배 골 경기 판 차례"
).split()
SINO_COUNTERS = (
    "년 년대 년생 년도 년간 월 일 일간 원 분 초 층 번지 호 호선 회 회차 퍼센트 프로 개월 개국 개년 개소 "
    "주 주년 주일 세 세기 세대 인 인분 점 등 위 학년 반 쪽 페이지 평 박 차 기 도 달러 엔 유로 위안 파운드 "
    "킬로 킬로그램 그램 미터 킬로미터 센티 센티미터 밀리 리터 톤 시즌 단계 교시 부 절 항 동 라운드 세트 "
    "승 패 무 강 배럴 칼로리 킬로칼로리 기가 메가"
).split()
# written unit -> (spoken unit, spoken prefix)
SYMBOL_UNITS = {
    "km/h": ("킬로미터", "시속"), "m/s": ("미터", "초속"), "mph": ("마일", "시속"),
    "km²": ("제곱킬로미터", ""), "m²": ("제곱미터", ""), "cm²": ("제곱센티미터", ""), "m³": ("세제곱미터", ""),
    "km": ("킬로미터", ""), "cm": ("센티미터", ""), "mm": ("밀리미터", ""), "m": ("미터", ""),
    "kg": ("킬로그램", ""), "mg": ("밀리그램", ""), "g": ("그램", ""),
    "ml": ("밀리리터", ""), "mL": ("밀리리터", ""), "L": ("리터", ""),
    "kcal": ("킬로칼로리", ""), "cal": ("칼로리", ""),
    "%p": ("퍼센트포인트", ""), "%": ("퍼센트", ""),
    "°C": ("도", ""), "°F": ("도", "화씨"), "°": ("도", ""),
    "TB": ("테라바이트", ""), "GB": ("기가바이트", ""), "MB": ("메가바이트", ""), "KB": ("킬로바이트", ""),
    "kB": ("킬로바이트", ""), "Hz": ("헤르츠", ""), "kHz": ("킬로헤르츠", ""), "MHz": ("메가헤르츠", ""),
    "GHz": ("기가헤르츠", ""), "kWh": ("킬로와트시", ""), "kW": ("킬로와트", ""), "W": ("와트", ""),
    "V": ("볼트", ""), "mAh": ("밀리암페어시", ""), "cc": ("시시", ""), "ha": ("헥타르", ""),
    "ms": ("밀리초", ""), "min": ("분", ""),
}
TEMPERATURE_UNITS = {"°C", "°F", "°", "도"}
# 번 before these is a label, read in Sino-Korean (3번 출구 -> 삼 번 출구), not a count (세 번).
_BEON_LABELS = re.compile(r"\s?(출구|버스|선|게이트|채널|국도|타자|트랙|홀|문제|좌석|테이블|환자|레인|방|칸|홈)")
_NATIVE = set(NATIVE_COUNTERS)


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_HANGUL_UNIT = _alternation(NATIVE_COUNTERS + SINO_COUNTERS)
_SYMBOL_UNIT = _alternation(SYMBOL_UNITS)
_UNIT = rf"(?:{_SYMBOL_UNIT})(?![A-Za-z])|(?:{_HANGUL_UNIT})"
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_BIG = r"(?:[십백천]?[만억조경]|[십백천])"

# --- Latin letters -------------------------------------------------------------------------------

LETTER_NAMES = {
    "A": "에이", "B": "비", "C": "씨", "D": "디", "E": "이", "F": "에프", "G": "지", "H": "에이치",
    "I": "아이", "J": "제이", "K": "케이", "L": "엘", "M": "엠", "N": "엔", "O": "오", "P": "피",
    "Q": "큐", "R": "알", "S": "에스", "T": "티", "U": "유", "V": "브이", "W": "더블유", "X": "엑스",
    "Y": "와이", "Z": "제트", "&": "앤",
}
# All-caps words Koreans say as a word, not letter by letter.
WORD_ACRONYMS = {
    "NASA": "나사", "NATO": "나토", "FIFA": "피파", "UNESCO": "유네스코", "UNICEF": "유니세프",
    "ASEAN": "아세안", "OPEC": "오펙", "COVID": "코비드", "K-POP": "케이팝", "K-pop": "케이팝",
}


def spell_letters(s: str) -> str:
    """Spell Latin capitals (and &) by their Korean letter names (KBS → 케이비에스)."""
    return "".join(LETTER_NAMES[c] for c in s.upper())


# --- rules, applied in this order ----------------------------------------------------------------

_PHONE = re.compile(r"(?<![\d-])(0\d{1,2})-(\d{3,4})-(\d{4})(?![\d-])")
_PHONE_SERVICE = re.compile(
    r"(?<![\d-])(15(?:44|66|77|88|99)|16(?:00|44|61|66|70|88))-(\d{4})(?![\d-])(?!\s?년)"
)
_PHONE_MOBILE = re.compile(r"(?<!\d)(01[016789])(\d{3,4})(\d{4})(?!\d)")
_DATE = re.compile(r"(?<![\d.])(\d{4})([.\-/])\s?(\d{1,2})\2\s?(\d{1,2})(?![\d])")
_VERSION = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d])")
_RANGE_BARE = re.compile(
    rf"(?<![\d.,:])({_NUMBER})\s?[~∼–]\s?(?=-?{_NUMBER}({_BIG})?(\s?(?:{_UNIT}))?)"
)
_RANGE_AFTER_UNIT = re.compile(r"(?<=[^\s~∼–])\s?[~∼–]\s?(?=-?\d)")
_RANGE_HYPHEN = re.compile(rf"(?<![\d.,\-])({_NUMBER})-({_NUMBER})\s?({_UNIT})")
_TIME = re.compile(r"(?<![\d:.])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])")
_RATIO = re.compile(r"(?<![\d:.])(\d+)\s?:\s?(\d+)(?![\d:])")
_FRACTION = re.compile(r"(?<![\d/.])(\d{1,3})/(\d{1,3})(?![\d/])")
_CURRENCY = re.compile(rf"([$€£¥₩])\s?({_NUMBER})({_BIG})?")
_CURRENCY_WORDS = {"$": "달러", "€": "유로", "£": "파운드", "¥": "엔", "₩": "원"}
# A token of capitals and digits (5G, A4, MP3, H2O, G20), not a number with a unit (5GB, 2L).
_ALNUM = re.compile(r"(?<![A-Za-z0-9.,])(?=[A-Z0-9]*[A-Z])(?=[A-Z0-9]*\d)[A-Z0-9]+(?![A-Za-z0-9])")
_UNIT_TOKEN = re.compile(rf"\d+(?:{_SYMBOL_UNIT})")
_MAIN = re.compile(
    rf"(?P<je>(?<![가-힣])제\s?)?(?:(?<![\w)\]])(?P<neg>-))?(?P<num>{_NUMBER})(?P<big>{_BIG})?"
    rf"(?:\s?(?P<unit>{_UNIT}))?"
)
_WORD_ACRONYM = re.compile(r"(?<![A-Za-z])(" + _alternation(WORD_ACRONYMS) + r")(?![A-Za-z])")
_ACRONYM = re.compile(r"(?<![A-Za-z&])[A-Z]+(?:&[A-Z]+)*(?![a-z&])")
_LETTER_CONTEXT = re.compile(r"[가-힣0-9-]")
_DIGIT_OR_CAPITAL = re.compile(r"[0-9A-Z]")
_DIGIT = re.compile(r"\d")


def _phone(m: re.Match) -> str:
    return " ".join(digits(g) for g in m.groups())


def _date(m: re.Match) -> str:
    year, _, month, day = m.groups()
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31):
        return m.group()
    return f"{year}년 {int(month)}월 {int(day)}일"  # the counter rule reads it


def _version(m: re.Match) -> str:
    return " 점 ".join(sino(int(p)) for p in m.group().split("."))


def _range_bare(m: re.Match) -> str:
    big, unit = m.group(2) or "", (m.group(3) or "").strip()
    return f"{m.group(1)}{big}{unit}에서 "


def _range_hyphen(m: re.Match) -> str:
    a, b, unit = m.groups()
    # Only an increasing pair is a range; addresses (123-45번지) and room numbers keep the hyphen.
    if unit in ("번지", "호", "동", "번") or _value(a) >= _value(b):
        return m.group()
    return f"{a}{unit}에서 {b}{unit}"


def _value(num: str) -> float:
    return float(num.replace(",", ""))


def _time(m: re.Match) -> str:
    h, mnt, s = int(m.group(1)), int(m.group(2)), m.group(3)
    if h > 24 or mnt > 59 or (s is not None and int(s) > 59):
        return m.group()
    out = f"{_hour(h)} 시"
    if mnt or (s and int(s)):
        out += f" {sino(mnt)} 분"
    if s and int(s):
        out += f" {sino(int(s))} 초"
    return out


def _hour(h: int) -> str:
    """1-12 in native Korean (세 시); 0 and 13-24 only occur on a 24-hour clock, read in Sino-Korean (십오 시)."""
    return native(h) if 1 <= h <= 12 else sino(h)


def _ratio(m: re.Match) -> str:
    return f"{sino(int(m.group(1)))} 대 {sino(int(m.group(2)))}"


def _fraction(m: re.Match) -> str:
    a, b = int(m.group(1)), int(m.group(2))
    if 0 < a < b <= 10:
        return f"{sino(b)}분의 {sino(a)}"
    if 1 <= a <= 12 and 1 <= b <= 31:  # 11/28: month/day
        return f"{a}월 {b}일"
    return m.group()


def _currency(m: re.Match) -> str:
    sym, num, big = m.group(1), m.group(2), m.group(3) or ""
    if "." in num:  # $3.50 -> 3.5달러 (a trailing zero is not spoken)
        num = num.rstrip("0").rstrip(".")
    return f"{num}{big}{_CURRENCY_WORDS[sym]}"


def _alnum(m: re.Match) -> str:
    token = m.group()
    if _UNIT_TOKEN.fullmatch(token):
        return token  # read by the number rule
    # Korean digit names, 0 as 공 (7B -> 칠비, A0 -> 에이공); longer runs in Sino-Korean (G20 -> 지이십).
    return "".join(
        spell_letters(run) if run[0].isalpha() else (digits(run) if len(run) == 1 else sino(int(run)))
        for run in re.findall(r"[A-Z]+|\d+", token)
    )


def _read_sino(num: str, drop_one: bool = False) -> str:
    integer, _, fraction = num.replace(",", "").partition(".")
    if fraction:
        return decimal(int(integer), fraction)
    if drop_one and int(integer) == 1:
        return ""
    return sino(int(integer))


def _is_native(unit: str, value: int, rest: str) -> bool:
    if unit not in _NATIVE or not 1 <= value <= 99:
        return False
    if unit == "시" and value > 12:
        return False  # 15시: a 24-hour clock (십오 시); 1-12 stay native (세 시)
    if unit == "대" and (value % 10 == 0 or re.match(r"\s?\d", rest)):
        return False  # 20대 (the twenties), 2대 1 (a score)
    if unit == "번" and _BEON_LABELS.match(rest):
        return False  # 3번 출구
    return True


def _number(m: re.Match) -> str:
    je, neg, num, big, unit = m.group("je", "neg", "num", "big", "unit")
    big = big or ""
    spoken_unit, prefix = SYMBOL_UNITS.get(unit, (unit, "")) if unit else ("", "")
    plain_int = "." not in num and not big and not neg and not je
    value = int(num.replace(",", "").partition(".")[0])
    if je:
        words = "제" + _read_sino(num) + big
    elif plain_int and unit and _is_native(unit, value, m.string[m.end():]):
        words = "첫" if (unit == "번째" and value == 1) else native(value)
    elif plain_int and unit == "월" and value in (6, 10):
        return "유월" if value == 6 else "시월"
    elif plain_int and not unit and num.isdigit() and len(num) > 1 and num.startswith("0"):
        words = digits(num)  # 007 -> 공공칠
    else:
        words = _read_sino(num, drop_one=bool(big) and big[0] in "십백천만") + big
    if neg:
        words = ("영하 " if unit in TEMPERATURE_UNITS else "마이너스 ") + words
    out = f"{words} {spoken_unit}" if spoken_unit else words
    if prefix and not m.string[: m.start()].rstrip().endswith(prefix):  # "시속 100km/h": one 시속
        out = f"{prefix} {out}"
    return out


def _acronym(m: re.Match) -> str:
    s = m.group()
    if len(s) == 1:
        # A lone capital is a letter only next to Hangul, digits or a hyphen (A형, 비타민C, USB-C),
        # not the English "I".
        before, after = m.string[m.start() - 1: m.start()], m.string[m.end(): m.end() + 1]
        if not (_LETTER_CONTEXT.match(before) or _LETTER_CONTEXT.match(after)):
            return s
    return spell_letters(s)


def normalize_korean(text: str) -> str:
    """Rewrite numbers, units, dates, times, phone numbers and Latin acronyms in Korean text as spoken Hangul.

    Args:
        text: text after the common cleanup (NFC, whitespace); punctuation spacing is fixed by the caller.
    """
    text = ascii_forms(text)
    if not _DIGIT_OR_CAPITAL.search(text):
        return text
    if not _DIGIT.search(text):  # every rule up to the acronyms needs a digit
        return _ACRONYM.sub(_acronym, _WORD_ACRONYM.sub(lambda m: WORD_ACRONYMS[m.group()], text))
    text = _PHONE.sub(_phone, text)
    text = _PHONE_SERVICE.sub(_phone, text)
    text = _PHONE_MOBILE.sub(_phone, text)
    text = _DATE.sub(_date, text)
    text = _VERSION.sub(_version, text)
    text = _RANGE_BARE.sub(_range_bare, text)
    text = _RANGE_AFTER_UNIT.sub("에서 ", text)
    text = _RANGE_HYPHEN.sub(_range_hyphen, text)
    text = _TIME.sub(_time, text)
    text = _RATIO.sub(_ratio, text)
    text = _FRACTION.sub(_fraction, text)
    text = _CURRENCY.sub(_currency, text)
    text = _ALNUM.sub(_alnum, text)
    text = _MAIN.sub(_number, text)
    text = _WORD_ACRONYM.sub(lambda m: WORD_ACRONYMS[m.group()], text)
    return _ACRONYM.sub(_acronym, text)
