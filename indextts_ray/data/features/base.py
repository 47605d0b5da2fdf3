"""The extractor protocol and the table of kinds (`features.kind` in the data config).

Every extractor turns mono 16 kHz float audio into conditioning features and target codes at the same
50 Hz frame rate, so `n_codes ≈ 50 * seconds` and a prompt of F frames is F * dim values.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from indextts_ray.data.config import FeaturesConfig

FRAME_RATE = 50  # Hz: w2v-BERT 2.0 frames (20 ms) and MaskGCT semantic codes


@runtime_checkable
class Extractor(Protocol):
    dim: int  # feature width (model.input_dim)
    frame_rate: int  # frames per second of both outputs
    codebook_size: int  # codes are in [0, codebook_size)

    def features(self, wav16k: np.ndarray) -> np.ndarray:
        """(N,) float32 at 16 kHz -> (T, dim) float32 conditioning features."""
        ...

    def codes(self, wav16k: np.ndarray) -> np.ndarray:
        """(N,) float32 at 16 kHz -> (T,) int32 semantic codes."""
        ...


# kind -> "module:function(cfg: FeaturesConfig, work_dir: Path) -> Extractor"; imported only when used,
# so `builtin` never imports transformers.
EXTRACTORS: dict[str, str] = {
    "builtin": "indextts_ray.data.features.builtin:build",
    "w2vbert-maskgct": "indextts_ray.data.features.w2vbert_maskgct:build",
}


def build_extractor(cfg: FeaturesConfig, work_dir: str | os.PathLike) -> Extractor:
    """Build the extractor `cfg.kind`; `work_dir` holds what it fitted or caches (e.g. the builtin codebook)."""
    module_name, func = EXTRACTORS[cfg.kind].split(":")
    extractor = getattr(importlib.import_module(module_name), func)(cfg, Path(work_dir))
    if not isinstance(extractor, Extractor):
        raise TypeError(f"{EXTRACTORS[cfg.kind]} returned {type(extractor).__name__}, not an Extractor")
    return extractor
