"""`data.text` config section: text normalisation before tokenisation."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from indextts_ray.schema import StrictModel


class TextConfig(StrictModel):
    """Text normalisation switches.

    Args:
        enabled: normalise transcripts before tokenisation; False keeps the manifest text unchanged.
        default_language: language of rows without one; None detects it from the script.
        languages: languages whose spoken-form rules run (numbers, units, dates, acronyms); text in any
            other language gets only the cleanup (NFC, control characters, whitespace).
    """

    enabled: bool = True
    default_language: str | None = None
    languages: list[Literal["ko", "en"]] = ["ko", "en"]

    @field_validator("default_language")
    @classmethod
    def _check_language(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]+)*", v):
            raise ValueError(f"expected a language code such as 'ko' or 'en', got {v!r}")
        return v
