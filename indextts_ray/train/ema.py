"""Exponential moving average of the trainable weights, for evaluation and export.

    every `every_n_steps` optimizer steps:  shadow <- decay * shadow + (1 - decay) * param

Only trainable floating-point parameters are tracked: frozen ones never change, so the model's own copy
is their average. The shadow is float32 whatever the parameter dtype, because (1 - decay) * param with
decay 0.9999 vanishes in bf16. `decay` is per update: with `every_n_steps: 10` the average spans ~10x more
optimizer steps than with 1.

`swapped(model)` puts the averaged weights into the model for an evaluation or an export and restores the
training weights bit for bit afterwards; the parameter names do not change, so an export made inside it
still holds exactly the official keys.

Under FSDP (`train.scaling.strategy: fsdp`) each rank averages only its shard of every parameter, so the
average is sharded like the model; `state_dict()` gathers the whole average (then every rank must call it)
and `load_state_dict` takes the whole average and keeps this rank's shard: the saved layout is the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from indextts_ray.train.robust_config import EMAConfig
from indextts_ray.train.sharding import gather, local, scatter

__all__ = ["EMA", "EMAConfig", "load_ema_weights"]


def _tracked(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}


class EMA:
    """The averaged copy of `model`'s trainable parameters, started at their current values."""

    def __init__(self, model: torch.nn.Module, cfg: EMAConfig):
        self.cfg = cfg
        self.num_updates = 0
        device = torch.device("cpu") if cfg.on_cpu else None
        tracked = _tracked(model)
        self._like = tracked  # the parameters' layout (sharded or not) for gathering the average
        self.shadow: dict[str, torch.Tensor] = {  # this rank's shard of each parameter's average
            n: local(p).detach().to(device=device or p.device, dtype=torch.float32, copy=True) for n, p in tracked.items()
        }

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Restart the average at the model's current weights (EMA switched on when resuming a run)."""
        params = self._match(model)
        for name, s in self.shadow.items():
            s.copy_(params[name])
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> bool:
        """Fold the current weights in if `step` (optimizer steps done) is a multiple of every_n_steps."""
        if step % self.cfg.every_n_steps:
            return False
        params = self._match(model)
        d = self.cfg.decay
        for name, s in self.shadow.items():
            p = params[name].detach().to(device=s.device, dtype=torch.float32)
            s.mul_(d).add_(p, alpha=1 - d)
        self.num_updates += 1
        return True

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Run the body with the averaged weights in `model`; the training weights come back bit-identical."""
        params = self._match(model)
        # host memory: a swap is rare (eval, export) and a second copy of the weights may not fit on the GPU
        backup = {n: params[n].detach().to("cpu", copy=True) for n in self.shadow}
        try:
            with torch.no_grad():
                for name, s in self.shadow.items():
                    params[name].copy_(s)
            yield model
        finally:
            with torch.no_grad():
                for name, b in backup.items():
                    params[name].copy_(b)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged weights into `model` for good (an export made from a checkpoint)."""
        params = self._match(model)
        for name, s in self.shadow.items():
            params[name].copy_(s)

    def state_dict(self) -> dict:
        """The whole average on the CPU (sharded: gathered, every rank must call this)."""
        return {"decay": self.cfg.decay, "every_n_steps": self.cfg.every_n_steps, "num_updates": self.num_updates,
                "shadow": {n: gather(s, self._like[n]).detach().cpu() for n, s in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the average; refuse another parameter set or an average built with another decay/cadence."""
        state = dict(state)
        try:
            decay, every, n, shadow = (state.pop(k) for k in ("decay", "every_n_steps", "num_updates", "shadow"))
        except KeyError as e:
            raise ValueError(f"EMA state: missing key {e}") from None
        if state:
            raise ValueError(f"EMA state: unexpected keys {sorted(state)}")
        if (decay, every) != (self.cfg.decay, self.cfg.every_n_steps):
            # a silently different average would make eval/export numbers incomparable across a resume
            raise ValueError(f"EMA state was built with decay {decay}, every {every} steps; config says "
                             f"{self.cfg.decay}, {self.cfg.every_n_steps}: set train.ema back or start a new run")
        if set(shadow) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
            raise ValueError(f"EMA state does not match the trainable parameters: missing {missing[:5]}, "
                             f"unexpected {extra[:5]} (was the freeze list changed?)")
        for name, s in self.shadow.items():
            like = self._like[name]
            if shadow[name].shape != like.shape:
                raise ValueError(f"EMA state: {name} has shape {tuple(shadow[name].shape)}, model {tuple(like.shape)}")
            s.copy_(scatter(shadow[name], like))
        self.num_updates = int(n)

    def _match(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's parameters by name; a sharded one as this rank's shard (what `shadow` holds)."""
        params = {n: local(p) for n, p in model.named_parameters()}
        missing = [n for n in self.shadow if n not in params]
        if missing:
            raise ValueError(f"EMA: the model has no parameters {missing[:5]} (pass the unwrapped model, not DDP)")
        return params


@torch.no_grad()
def load_ema_weights(model: torch.nn.Module, state: dict) -> int:
    """Copy the averaged weights of a saved `EMA.state_dict()` into `model`; return how many tensors.

    For exports from a checkpoint, where the rebuilt model does not know which modules were frozen in
    training: every averaged tensor must name a parameter of the same shape; the others keep their values.
    """
    params = dict(model.named_parameters())
    shadow = state["shadow"]
    unknown = sorted(n for n in shadow if n not in params or params[n].shape != shadow[n].shape)
    if unknown:
        raise ValueError(f"EMA weights do not fit the model: {unknown[:5]}")
    for name, s in shadow.items():
        params[name].copy_(s)
    return len(shadow)
