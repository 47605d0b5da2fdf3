"""UnifiedVoice v2 (IndexTTS2 GPT) and the training-only heads.

Imports are lazy: `indextts_ray.config` imports `indextts_ray.model.config`, and loading a config must not
import torch.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from indextts_ray.model.config import LossWeights, ModelConfig

if TYPE_CHECKING:
    import torch

    from indextts_ray.model.training import TrainingModel
    from indextts_ray.model.unifiedvoice import UnifiedVoice

__all__ = ["LossWeights", "ModelConfig", "TrainingModel", "UnifiedVoice", "build_model"]


def build_model(
    cfg: ModelConfig | str | os.PathLike, device: torch.device | str | None = None, n_speakers: int | None = None
) -> UnifiedVoice | TrainingModel:
    """Build a freshly initialised model (official init).

    Args:
        cfg: a ModelConfig or the path of a model YAML (e.g. configs/model/tiny.yaml).
        device: where to allocate; "meta" builds the official 866M model without memory.
        n_speakers: None -> a bare `UnifiedVoice`; an int -> a `TrainingModel` with that many speaker classes.
    """
    import torch

    if not isinstance(cfg, ModelConfig):
        from indextts_ray.config import load_config

        cfg = load_config(cfg, schema=ModelConfig)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if n_speakers is None:
            from indextts_ray.model.unifiedvoice import UnifiedVoice

            return UnifiedVoice(cfg)
        from indextts_ray.model.training import TrainingModel

        return TrainingModel(cfg, n_speakers)


def __getattr__(name: str) -> Any:
    if name == "UnifiedVoice":
        from indextts_ray.model.unifiedvoice import UnifiedVoice

        return UnifiedVoice
    if name == "TrainingModel":
        from indextts_ray.model.training import TrainingModel

        return TrainingModel
    raise AttributeError(f"module 'indextts_ray.model' has no attribute {name!r}")
