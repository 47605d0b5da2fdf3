"""Korean number words: Sino-Korean cardinals, native-Korean counter forms, digit strings, decimals.

Conventions (the ones a Korean newsreader uses):
- Sino-Korean drops 일 before 십/백/천 and before a leading 만 (10 → 십, 1000 → 천, 10000 → 만),
  but keeps it before 억/조/경 (1억 → 일억). Groups of four digits are separated by a space,
  as Korean orthography spaces numbers by 만 units (1234567 → 백이십삼만 사천오백육십칠).
- Native-Korean numbers exist for 1–99 only; before a counter they take the attributive forms
  한/두/세/네/스무 (21 → 스물한, 20 → 스무). 100 and above are read in Sino-Korean.
- Digit strings (phone numbers, leading zeros) read 0 as 공, the way Koreans read phone numbers;
  decimals read 0 as 영 (0.05 → 영 점 영오).
"""

from __future__ import annotations

SINO_DIGITS = "영일이삼사오육칠팔구"
_SMALL_UNITS = ((1000, "천"), (100, "백"), (10, "십"))
_GROUP_UNITS = ("", "만", "억", "조", "경")
MAX_SINO = 10 ** (4 * len(_GROUP_UNITS)) - 1  # beyond 경 groups: read digit by digit

_NATIVE_ONES = ("", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉")
_NATIVE_TENS = ("", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔")
_ATTRIBUTIVE = {"하나": "한", "둘": "두", "셋": "세", "넷": "네"}


def _below_10000(n: int) -> str:
    out = []
    for value, name in _SMALL_UNITS:
        d = n // value % 10
        if d:
            out.append(("" if d == 1 else SINO_DIGITS[d]) + name)
    if n % 10:
        out.append(SINO_DIGITS[n % 10])
    return "".join(out)


def sino(n: int) -> str:
    """Read an integer in Sino-Korean (2026 → 이천이십육, 10000 → 만, -3 → 마이너스 삼).

    Args:
        n: any integer; beyond 10^20 it is read digit by digit.
    """
    if n < 0:
        return "마이너스 " + sino(-n)
    if n == 0:
        return "영"
    if n > MAX_SINO:
        return digits(str(n), zero="영")
    parts = []
    group = 0
    while n:
        n, g = divmod(n, 10000)
        if g:
            word = "" if (group == 1 and g == 1) else _below_10000(g)
            parts.append(word + _GROUP_UNITS[group])
        group += 1
    return " ".join(reversed(parts))


def native(n: int, attributive: bool = True) -> str:
    """Read 1–99 in native Korean (3 → 세 before a counter, 셋 alone; 20 → 스무 / 스물).

    Args:
        n: 1 to 99.
        attributive: the form used before a counter (한/두/세/네/스무).
    """
    if not 1 <= n <= 99:
        raise ValueError(f"native Korean numbers cover 1-99, got {n}")
    tens, ones = divmod(n, 10)
    if ones == 0:
        return "스무" if attributive and tens == 2 else _NATIVE_TENS[tens]
    one = _NATIVE_ONES[ones]
    if attributive:
        one = _ATTRIBUTIVE.get(one, one)
    return _NATIVE_TENS[tens] + one


def digits(s: str, zero: str = "공") -> str:
    """Read a digit string digit by digit ("010" → 공일공).

    Args:
        s: ASCII digits only.
        zero: the word for 0 (공 for phone numbers and codes, 영 for decimals).
    """
    return "".join(zero if c == "0" else SINO_DIGITS[int(c)] for c in s)


def decimal(integer: int, fraction: str) -> str:
    """Read a decimal in Sino-Korean (3, "14" → 삼 점 일사).

    Args:
        integer: the part before the point.
        fraction: the digits after the point, read one by one with 0 as 영.
    """
    return f"{sino(integer)} 점 {digits(fraction, zero='영')}"
