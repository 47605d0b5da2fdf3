"""English normalisation: numbers, ordinals, years, money, percent, times, dates, units, abbreviations.

    42 -> forty-two          1,234 -> one thousand two hundred thirty-four (American: no "and")
    1st -> first             in 1999 -> in nineteen ninety-nine, 2005 -> two thousand five
    $3.50 -> three dollars and fifty cents        $5 million -> five million dollars
    50% -> fifty percent     3.14 -> three point one four      -7 -> minus seven
    10:30 -> ten thirty      10:05 -> ten oh five   10:00 -> ten o'clock   9 a.m. -> nine a m
    2026-11-28 -> November twenty-eighth, twenty twenty-six
    5 km -> five kilometers  1 kg -> one kilogram   20°C -> twenty degrees Celsius
    3-5 -> three to five     Dr. Smith -> Doctor Smith   555-1234 -> five five five, one two three four

Cardinals and ordinals come from num2words (lang="en"); years, money, times and units are our rules.
Four-digit numbers from 1100 to 2099 with no unit are read as years.
"""

from __future__ import annotations

import re

from num2words import num2words

from indextts_ray.text.common import ascii_forms

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

# abbreviation (with its dot) -> spoken form; matched case-sensitively at a word start
ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
    "Jr.": "Junior", "Sr.": "Senior", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
    "i.e.": "that is", "approx.": "approximately", "Mt.": "Mount", "Ave.": "Avenue", "Inc.": "Incorporated",
    "Ltd.": "Limited", "Co.": "Company", "Dept.": "Department", "Gov.": "Governor", "Sen.": "Senator",
}
_MONTH_ABBREVIATIONS = {m[:3] + ".": m for m in MONTHS if len(m) > 4} | {"Sept.": "September"}

# unit -> (singular, plural)
UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"), "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"), "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"), "kg": ("kilogram", "kilograms"), "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"), "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "L": ("liter", "liters"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ft": ("foot", "feet"), "mi": ("mile", "miles"), "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"), "°": ("degree", "degrees"),
    "TB": ("terabyte", "terabytes"), "GB": ("gigabyte", "gigabytes"), "MB": ("megabyte", "megabytes"),
    "KB": ("kilobyte", "kilobytes"), "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"), "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"), "W": ("watt", "watts"), "V": ("volt", "volts"),
    "min": ("minute", "minutes"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "%": ("percent", "percent"),
}
# symbol -> (unit, units, subunit, subunits)
CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "sen", "sen"),
}
_SCALES = {"K": "thousand", "M": "million", "B": "billion", "bn": "billion"}


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def cardinal(n: int) -> str:
    """Read an integer in American English (1234 → one thousand two hundred thirty-four).

    Beyond the quadrillions (16+ digits: account numbers, ids) it reads digit by digit.
    """
    if abs(n) >= 10**15:
        return ("minus " if n < 0 else "") + " ".join(DIGIT_WORDS[int(d)] for d in str(abs(n)))
    return num2words(n, lang="en").replace(",", "").replace(" and ", " ")


def ordinal(n: int) -> str:
    """Read an ordinal (21 → twenty-first)."""
    return num2words(n, lang="en", to="ordinal").replace(",", "").replace(" and ", " ")


def year(n: int) -> str:
    """Read a year the usual way (1999 → nineteen ninety-nine, 2005 → two thousand five, 1900 → nineteen hundred)."""
    hi, lo = divmod(n, 100)
    if 2000 <= n <= 2009 or n % 1000 == 0:
        return cardinal(n)
    if lo == 0:
        return f"{cardinal(hi)} hundred"
    if lo < 10:
        return f"{cardinal(hi)} oh {cardinal(lo)}"
    return f"{cardinal(hi)} {cardinal(lo)}"


def _decimal(num: str) -> str:
    integer, _, fraction = num.replace(",", "").partition(".")
    words = cardinal(int(integer))
    if fraction:
        words += " point " + " ".join(DIGIT_WORDS[int(d)] for d in fraction)
    return words


_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_ABBREVIATION = re.compile(r"(?<![\w.])(" + _alternation(ABBREVIATIONS) + ")")
_ST = re.compile(r"(?<![\w.])St\.(?=\s[A-Z])")
_STREET = re.compile(r"(?<![\w.])St\.")
_NUMBER_SIGN = re.compile(r"(?<![\w.])(?:No\.|#)\s?(?=\d)")
_MONTH_ABBREVIATION = re.compile(r"(?<![\w.])(" + _alternation(_MONTH_ABBREVIATIONS) + r")(?=\s?\d)")
_PHONE = re.compile(r"(?<![\d-])(?:\(?(\d{3})\)?[\s.-])?(\d{3})-(\d{4})(?![\d-])")
_ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")
_TIME = re.compile(r"(?<![\d:.])(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s?([AaPp])\.?[Mm]\b\.?)?(?![\d:])")
_HOUR_AMPM = re.compile(r"(?<![\d:.])(\d{1,2})\s?([AaPp])\.?[Mm]\b\.?")
_CURRENCY = re.compile(rf"([$€£¥])\s?({_NUMBER})(?:\s?(million|billion|trillion|thousand|bn|[KMB])\b)?")
_RANGE = re.compile(r"(?<![\d.,:-])(\d{1,4})\s?[-–~]\s?(\d{1,4})(?![\d.,:])")
_ORDINAL = re.compile(r"(?<![\d.,])(\d+)(?:st|nd|rd|th)\b")
_MAIN = re.compile(
    rf"(?:(?<![\w)\]])(?P<neg>-))?(?P<num>{_NUMBER})(?:\s?(?P<unit>(?:{_alternation(UNITS)})(?![A-Za-z])))?"
)
_MONTH_DAY = re.compile(r"\b(" + "|".join(MONTHS) + r")\s(\d{1,2})(?:st|nd|rd|th)?(?![\d:.,]\d)\b")
_VERSION = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d])")
_FRACTION = re.compile(r"(?<![\d/.])(\d)/(\d{1,2})(?![\d/])")
_AMPERSAND = re.compile(r"(?<=\s)&(?=\s)")
_DIGIT = re.compile(r"\d")


def _ampm(letter: str | None) -> str:
    return f" {letter.lower()} m" if letter else ""


def _phone(m: re.Match) -> str:
    return ", ".join(" ".join("oh" if d == "0" else DIGIT_WORDS[int(d)] for d in g) for g in m.groups() if g)


def _iso_date(m: re.Match) -> str:
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group()
    return f"{MONTHS[mo - 1]} {ordinal(d)}, {year(y)}"


def _time(m: re.Match) -> str:
    h, mnt, s, ap = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    if h > 24 or mnt > 59 or (s is not None and int(s) > 59):
        return m.group()
    if mnt == 0:
        out = cardinal(h) + ("" if ap else " o'clock")
    elif mnt < 10:
        out = f"{cardinal(h)} oh {cardinal(mnt)}"
    else:
        out = f"{cardinal(h)} {cardinal(mnt)}"
    if s is not None and int(s):
        out += f" and {cardinal(int(s))} seconds"
    return out + _ampm(ap)


def _currency(m: re.Match) -> str:
    unit, units, sub, subs = CURRENCIES[m.group(1)]
    num, scale = m.group(2), m.group(3)
    if scale:  # $5 million, $2.5B
        return f"{_decimal(num)} {_SCALES.get(scale, scale)} {units}"
    integer, _, fraction = num.replace(",", "").partition(".")
    whole = int(integer)
    cents = int((fraction + "00")[:2]) if fraction else 0
    parts = []
    if whole or not cents:
        parts.append(f"{cardinal(whole)} {unit if whole == 1 else units}")
    if cents:
        parts.append(f"{cardinal(cents)} {sub if cents == 1 else subs}")
    return " and ".join(parts)


def _fraction(m: re.Match) -> str:
    a, b = int(m.group(1)), int(m.group(2))
    if not 0 < a < b <= 10:
        return m.group()
    if b == 2:
        name = "half" if a == 1 else "halves"
    elif b == 4:
        name = "quarter" if a == 1 else "quarters"
    else:
        name = ordinal(b) + ("" if a == 1 else "s")
    return f"{cardinal(a)} {name}"


def _number(m: re.Match) -> str:
    neg, num, unit = m.group("neg", "num", "unit")
    plain = num.isdigit()
    if plain and not neg and not unit and len(num) == 4 and 1100 <= int(num) <= 2099:
        words = year(int(num))
    else:
        words = _decimal(num)
    if neg:
        words = "minus " + words
    if unit:
        singular, plural = UNITS[unit]
        words += " " + (singular if num == "1" and not neg else plural)
    before = m.string[m.start() - 1: m.start()]
    return " " + words if before.isalpha() else words  # A4 -> A four


def normalize_english(text: str) -> str:
    """Rewrite numbers, money, dates, times, units and common abbreviations in English text as words.

    Args:
        text: text after the common cleanup (NFC, whitespace); punctuation spacing is fixed by the caller.
    """
    text = ascii_forms(text)
    text = _ST.sub("Saint", text)
    text = _STREET.sub(lambda m: "Street" + ("." if m.end() == len(m.string) else ""), text)
    # An abbreviation that ends the text keeps its full stop ("apples, etc." -> "apples, et cetera.").
    text = _ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group()] + ("." if m.end() == len(m.string) else ""), text)
    text = _MONTH_ABBREVIATION.sub(lambda m: _MONTH_ABBREVIATIONS[m.group()], text)
    text = _NUMBER_SIGN.sub("number ", text)
    text = _AMPERSAND.sub("and", text)
    if not _DIGIT.search(text):
        return text
    text = _PHONE.sub(_phone, text)
    text = _ISO_DATE.sub(_iso_date, text)
    text = _TIME.sub(_time, text)
    text = _HOUR_AMPM.sub(lambda m: cardinal(int(m.group(1))) + _ampm(m.group(2)), text)
    text = _MONTH_DAY.sub(lambda m: f"{m.group(1)} {ordinal(int(m.group(2)))}", text)
    text = _CURRENCY.sub(_currency, text)
    text = _VERSION.sub(lambda m: " point ".join(cardinal(int(p)) for p in m.group().split(".")), text)
    text = _FRACTION.sub(_fraction, text)
    text = _RANGE.sub(r"\1 to \2", text)
    text = _ORDINAL.sub(lambda m: ordinal(int(m.group(1))), text)
    return _MAIN.sub(_number, text)
