"""Text front end: per-language normalisation to spoken form before tokenisation.

`normalize(text, language)` is the one entry point (Korean and English rules, cleanup for the rest);
`normalize_with_config` applies the `data.text` config section to a manifest row.
"""

from indextts_ray.text.config import TextConfig
from indextts_ray.text.language import canonical_language, detect_language
from indextts_ray.text.normalize import (
    KNOWN_LANGUAGES,
    Normalized,
    leftover_characters,
    normalize,
    normalize_with_config,
)

__all__ = [
    "KNOWN_LANGUAGES",
    "Normalized",
    "TextConfig",
    "canonical_language",
    "detect_language",
    "leftover_characters",
    "normalize",
    "normalize_with_config",
]
