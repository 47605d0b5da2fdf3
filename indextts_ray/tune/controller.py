"""The band controller runs inside the training loop, so it lives in `train/band.py` (train never imports tune);
re-exported here for the tuning side (benchmarks/band_control.py)."""

from indextts_ray.train.band import BandController, Change, DivergenceError, controller_for

__all__ = ["BandController", "Change", "DivergenceError", "controller_for"]
