"""FSDP2 for `train.scaling.strategy: fsdp`: shard the model over the ranks, and move full state in and out.

Under DDP every rank holds the whole model, its gradients and the AdamW moments (16 bytes per trainable
parameter in fp32). `fully_shard` (FSDP2, per-parameter DTensor sharding, works with gloo on CPU too) keeps
1/N of each on every rank and all-gathers one group of layers at a time for its forward and backward. The
groups: each GPT block, the four conditioning encoders/perceivers (~336M of the 866M parameters), the three
training heads, then the root (embeddings, LM heads, norms: ~58M).

Checkpoints do not change: `full_state_dicts` gathers the full, unsharded model and optimizer state in
exactly the layout `model.state_dict()` / `optimizer.state_dict()` of the plain model has (parameter ids, not
names, in the optimizer state), so a run resumes under either strategy and `indextts-ray export` reads it.
The gathering functions are collectives: every rank calls them; only rank 0 gets the data.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from indextts_ray.model.training import TrainingModel

# sharded apart from the root: large, and each called as a module (FSDP's hooks run on module calls)
ENCODERS = ("conditioning_encoder", "perceiver_encoder", "emo_conditioning_encoder", "emo_perceiver_encoder")
HEADS = ("speaker_classifier", "emotion_classifier", "emotion_table")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: TrainingModel, device: torch.device, world_size: int,
                amp_dtype: torch.dtype | None) -> TrainingModel:
    """Apply FSDP2 to `model` in place (its parameters become DTensor shards); build the optimizer after this.

    Args:
        model: on `device`, frozen modules already frozen (they are sharded too and never change).
        amp_dtype: bf16/fp16 -> the blocks, encoders and root compute in it (gradients reduced in fp32); the
            training heads always compute in fp32, as they do under DDP (their autocast is switched off).
    """
    mesh = init_device_mesh(device.type, (world_size,))
    half = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32) if amp_dtype is not None \
        else MixedPrecisionPolicy()
    uv = model.model
    for module in [*uv.gpt.h, *(getattr(uv, name) for name in ENCODERS)]:
        fully_shard(module, mesh=mesh, mp_policy=half)
    for name in HEADS:
        head = getattr(model.heads, name)
        if head is not None:
            fully_shard(head, mesh=mesh, mp_policy=MixedPrecisionPolicy())
    fully_shard(model, mesh=mesh, mp_policy=half)
    # like DDP's find_unused_parameters: a parameter without a gradient on one rank still takes part (as 0)
    model.set_reduce_scatter_unused_params(True)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def grad_sync(model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-step's backward: reduce gradients over the ranks only when `enabled`.

    DDP: `no_sync()` unless enabled. FSDP: gradients stay unsharded and local until the micro-step that syncs.
    A single-process (unwrapped) model has nothing to sync.
    """
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if enabled or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts of the whole model in the plain-model layout, on the CPU.

    Sharded: a collective that every rank calls; rank 0 gets the dicts, the others empty ones.
    """
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    model_state = get_model_state_dict(model, options=_FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if dist.get_rank() != 0:  # cpu_offload keeps the gathered copy on rank 0 only
        return model_state, {}
    ids = {name: i for i, name in enumerate(n for group in optim["param_groups"] for n in group["params"])}
    return model_state, {"state": {ids[name]: s for name, s in optim["state"].items()},
                         "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in optim["param_groups"]]}


def load_full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                          optimizer_state: dict) -> None:
    """Load full (plain-model layout) state dicts, as `full_state_dicts` writes them, into a sharded model.

    Every rank passes the full dicts and keeps its own shard of them; strict (missing/unexpected keys raise).
    """
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True, strict=True))
    names = {p: n for n, p in model.named_parameters()}
    fqn = [names[p] for group in optimizer.param_groups for p in group["params"]]  # plain-model id -> name
    n_saved = sum(len(g["params"]) for g in optimizer_state["param_groups"])
    if n_saved != len(fqn):
        raise ValueError(f"optimizer state has {n_saved} parameters, this optimizer {len(fqn)} (was the freeze "
                         "list or a loss weight changed?)")
    by_name = {"state": {fqn[i]: s for i, s in optimizer_state["state"].items()},
               "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def full_model(model: TrainingModel) -> TrainingModel | None:
    """A plain CPU TrainingModel with the whole weights of sharded `model` on rank 0, None elsewhere (collective).

    For exports (`best/`): built on the meta device and filled with the gathered tensors, so it costs no
    initialisation and no second copy of the weights.
    """
    state = get_model_state_dict(model, options=_FULL)
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        plain = TrainingModel(model.cfg, n_speakers=model.heads.n_speakers)
    plain.load_state_dict(state, strict=True, assign=True)
    plain.set_grl_lambda(model.heads.grl.lam)
    return plain


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (the tensor itself: writes reach the parameter), else `t` itself."""
    if not isinstance(t, DTensor):
        return t
    with torch.no_grad():  # outside no_grad to_local() returns an autograd view that refuses in-place writes
        return t.to_local()


def gather(shard: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor from this rank's `shard` of a tensor laid out like `like` (collective when sharded)."""
    if not isinstance(like, DTensor):
        return shard
    full = DTensor.from_local(shard.to(like.device), like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())
    return full.full_tensor()


def scatter(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `full` for a tensor laid out like `like` (no communication), else `full`."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()
