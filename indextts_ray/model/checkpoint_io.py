"""Official-checkpoint I/O: import `gpt.pth`, grow the text vocabulary, export a drop-in directory.

Export layout (`export_checkpoint`), all files written atomically:

    gpt.pth                      bare state dict, exactly the official keys (loads with strict=True)
    gpt.safetensors              the same tensors
    config.yaml                  official-style config with the `gpt:` section (your base config's other
                                 sections kept when `base_config` is given)
    model_config.yaml            our full ModelConfig (architecture for resume/eval)
    training_heads.safetensors   speaker/emotion classifiers (only with a TrainingModel)
    emotion_table.safetensors    emotion-label table, labels in the metadata (only with a TrainingModel)
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write, atomic_write_text
from indextts_ray.model.config import ModelConfig
from indextts_ray.model.heads import EmotionTable, TrainingHeads
from indextts_ray.model.unifiedvoice import UnifiedVoice

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile
# Aliases some files carry (saved after the official post_init_gpt2_config, or by old transformers):
# gpt.wte is mel_embedding, inference_model.* alias existing modules, attn.bias/masked_bias are causal masks.
ALIAS_KEY = re.compile(r"^(gpt\.wte\.weight|inference_model\..*|gpt\.h\.\d+\.attn\.(bias|masked_bias))$")
OFFICIAL_DEFAULTS = {"condition_num_latent": 32, "max_conditioning_inputs": 1, "types": 1}
OFFICIAL_GPT_FIELDS = (
    "model_dim", "max_mel_tokens", "max_text_tokens", "heads", "use_mel_codes_as_input", "mel_length_compression",
    "layers", "number_text_tokens", "number_mel_codes", "start_mel_token", "stop_mel_token", "start_text_token",
    "stop_text_token", "train_solo_embeddings", "condition_type",
)  # fmt: skip
MAX_LISTED = 8


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from `.pth`/`.pt` (bare or {"model": ...}, weights_only) or `.safetensors`, on CPU.

    Strips DDP/compile prefixes and drops known alias keys (gpt.wte, inference_model.*, attn.bias).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass the path of gpt.pth")
    if path.suffix == ".safetensors":
        sd = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle / zip errors: name the file and say what works
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"{path}: not a weights-only PyTorch checkpoint ({first}); re-save it as a plain state dict "
                "(torch.save(model.state_dict(), path))"
            ) from None
        sd = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise DataError(f"{path}: expected a state dict of tensors (or {{'model': state_dict}}), got {type(obj).__name__}")
    clean: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in sd.items():
        k = _strip_prefixes(key)
        if ALIAS_KEY.match(k):
            dropped += 1
            continue
        clean[k] = value
    if dropped:
        log.info("%s: dropped %d alias keys (gpt.wte / inference_model.* / attn.bias)", path, dropped)
    return clean


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _listed(items: list[str]) -> str:
    more = f", ... +{len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "[" + ", ".join(items[:MAX_LISTED]) + more + "]"


def describe_checkpoint(sd: dict[str, torch.Tensor]) -> str:
    """Architecture values readable from a state dict's shapes, as config overrides."""
    hints = []
    if "text_embedding.weight" in sd:
        rows, dim = sd["text_embedding.weight"].shape
        hints += [f"model_dim={dim}", f"number_text_tokens={rows - 1}"]
    if "mel_embedding.weight" in sd:
        hints.append(f"number_mel_codes={sd['mel_embedding.weight'].shape[0]}")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"gpt\.h\.(\d+)\.", k))}
    if layers:
        hints.append(f"layers={max(layers) + 1}")
    if "text_pos_embedding.emb.weight" in sd:
        hints.append(f"max_text_tokens={sd['text_pos_embedding.emb.weight'].shape[0] - 2}")
    return " ".join(hints)


def check_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, source: str | os.PathLike) -> None:
    """Raise DataError naming missing / unexpected / shape-mismatched keys unless `sd` fits `model` exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {_shape(sd[k])} vs model {_shape(v)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected {_listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches {_listed(shapes)}")
    hint = describe_checkpoint(sd)
    fix = f"set the model config to the checkpoint's values ({hint})" if hint else "use the matching model config"
    raise DataError(f"{source}: checkpoint does not match the model: {'; '.join(parts)}. Fix: {fix}")


# ----------------------------------------------------------------------------- import

TEXT_ROW_KEYS = ("text_embedding.weight", "text_head.weight", "text_head.bias")


def _grow_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean of the existing rows (old rows untouched)."""
    extra = t.mean(0, keepdim=True).expand(rows - t.shape[0], *t.shape[1:])
    return torch.cat((t, extra.to(t.dtype)))


def grow_text_vocab_state(sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str | os.PathLike) -> bool:
    """If `sd` has fewer text rows than `cfg` (the tokenizer grew), grow them in place; True when it did."""
    if "text_embedding.weight" not in sd:
        return False
    old, new = sd["text_embedding.weight"].shape[0], cfg.text_vocab_size
    if old >= new:
        return False
    if cfg.types != 1:
        raise DataError(f"{source}: text vocabulary growth supports types=1 only")
    for k in TEXT_ROW_KEYS:
        if k in sd:
            sd[k] = _grow_rows(sd[k], new)
    log.info("%s: grew the text vocabulary %d -> %d rows (new rows = mean of the old)", source, old, new)
    return True


def _prepare(sd: dict[str, torch.Tensor], model: UnifiedVoice, source: str | os.PathLike) -> dict[str, torch.Tensor]:
    grow_text_vocab_state(sd, model.cfg, source)
    check_state_dict(sd, model, source)
    expected = model.state_dict()
    cast = sorted({str(v.dtype) for k, v in sd.items() if v.dtype != expected[k].dtype})
    if cast:
        log.warning("%s: tensors stored as %s are cast to the model dtype", source, ", ".join(cast))
    return {k: v.to(expected[k].dtype).contiguous() for k, v in sd.items()}


def load_official(
    path: str | os.PathLike, cfg: ModelConfig, device: torch.device | str | None = None
) -> UnifiedVoice:
    """Build a UnifiedVoice for `cfg` holding the weights of an official-layout checkpoint (strict).

    A checkpoint with fewer text rows than `cfg` (the tokenizer gained pieces) is grown like
    `resize_text_vocab`: old rows bit-identical, new rows the mean.
    """
    with torch.device("meta"):  # no init cost: every tensor comes from the file
        model = UnifiedVoice(cfg)
    sd = _prepare(read_checkpoint(path), model, path)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device) if device is not None else model


def load_init_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load starting weights into an existing UnifiedVoice / TrainingModel (strict key/shape check).

    `path` is an official `gpt.pth` (or .safetensors) or an `export_checkpoint` directory. From a directory
    the emotion classifier and emotion table are loaded too when present, and the speaker classifier when
    its speaker count matches (a new speaker mapping starts a fresh classifier).
    """
    from indextts_ray.model.training import TrainingModel

    model = _unwrap(model)
    uv: UnifiedVoice = model.model if isinstance(model, TrainingModel) else model
    path = Path(path)
    weights = path
    if path.is_dir():
        weights = next((path / n for n in ("gpt.safetensors", "gpt.pth") if (path / n).is_file()), path / "gpt.pth")
    sd = _prepare(read_checkpoint(weights), uv, weights)
    uv.load_state_dict(sd, strict=True)
    if isinstance(model, TrainingModel) and path.is_dir():
        _load_heads_if_present(model.heads, path)


def _load_heads_if_present(heads: TrainingHeads, export_dir: Path) -> None:
    hpath = export_dir / "training_heads.safetensors"
    if hpath.is_file():
        labels = json.loads(_metadata(hpath).get("emotion_labels", "null"))
        if labels != heads.emotion_table.labels:
            raise DataError(f"{hpath}: emotion labels {labels} differ from the config's {heads.emotion_table.labels}; "
                            "set model.emotion_labels to the exported list")
        sd = load_file(str(hpath), device="cpu")
        emo = {k[len("emotion_classifier.") :]: v for k, v in sd.items() if k.startswith("emotion_classifier.")}
        _load_into(heads.emotion_classifier, emo, hpath)
        n = int(_metadata(hpath).get("n_speakers", "0"))
        if heads.speaker_classifier is not None and n == heads.n_speakers:
            spk = {k[len("speaker_classifier.") :]: v for k, v in sd.items() if k.startswith("speaker_classifier.")}
            _load_into(heads.speaker_classifier, spk, hpath)
        elif heads.speaker_classifier is not None:
            log.info("%s: speaker classifier was trained for %d speakers, this run has %d: starting it fresh",
                     hpath, n, heads.n_speakers)
    tpath = export_dir / "emotion_table.safetensors"
    if tpath.is_file():
        load_emotion_table(heads.emotion_table, tpath)


@torch.no_grad()
def resize_text_vocab(model: UnifiedVoice, new_number_text_tokens: int) -> None:
    """Grow `text_embedding` / `text_head` to a larger tokenizer, in place.

    Existing rows (and head biases) stay bit-identical at the same ids; new rows start at the mean of the old
    ones, so new ids begin as an "average piece". Do this before building the optimizer.
    """
    cfg = model.cfg
    if cfg.types != 1:
        raise ValueError("resize_text_vocab supports types=1 (the IndexTTS2 setting) only")
    new_cfg = cfg.model_copy(update={"number_text_tokens": new_number_text_tokens})
    old = model.text_embedding.weight
    rows = new_cfg.text_vocab_size
    if rows < old.shape[0]:
        raise ValueError(f"cannot shrink the text vocabulary ({old.shape[0]} rows -> {rows}); ids would be lost")
    if rows == old.shape[0]:
        return
    d, kw = old.shape[1], {"device": old.device, "dtype": old.dtype}
    emb = nn.Embedding(rows, d, **kw)
    emb.weight.copy_(_grow_rows(old, rows))
    emb.weight.requires_grad_(old.requires_grad)
    oh = model.text_head
    head = nn.Linear(d, rows, **kw)
    head.weight.copy_(_grow_rows(oh.weight, rows))
    head.bias.copy_(_grow_rows(oh.bias, rows))
    head.requires_grad_(oh.weight.requires_grad)
    # Re-assigning existing attributes keeps their place in the state-dict order.
    model.text_embedding = emb
    model.text_head = head
    model.cfg = new_cfg


# ----------------------------------------------------------------------------- export


def official_gpt_section(cfg: ModelConfig) -> dict:
    """The `gpt:` mapping of an official config.yaml (`UnifiedVoice(**cfg.gpt)` accepts every key)."""
    gpt = {k: getattr(cfg, k) for k in OFFICIAL_GPT_FIELDS}
    gpt["condition_module"] = cfg.condition_module.model_dump()
    gpt["emo_condition_module"] = cfg.emo_condition_module.model_dump()
    for k, default in OFFICIAL_DEFAULTS.items():  # only written when they differ, like the official file
        if getattr(cfg, k) != default:
            gpt[k] = getattr(cfg, k)
    return gpt


def _unwrap(module: nn.Module) -> nn.Module:
    while True:
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def export_checkpoint(
    model: nn.Module,
    out_dir: str | os.PathLike,
    cfg: ModelConfig | None = None,
    base_config: str | os.PathLike | None = None,
) -> Path:
    """Write an official drop-in directory (see the module doc) and return it.

    Args:
        model: a UnifiedVoice, or a TrainingModel (then the heads and emotion table sidecars are written too);
            DDP / torch.compile wrappers are unwrapped.
        out_dir: target directory (created).
        cfg: optional; when given it must equal the model's own config (guards against exporting with a
            config that does not describe the weights).
        base_config: an official config.yaml whose other sections (dataset, s2mel, ...) are kept; only its
            `gpt:` section is replaced.
    """
    from indextts_ray.model.training import TrainingModel  # local: training imports this module's deps

    model = _unwrap(model)
    heads = model.heads if isinstance(model, TrainingModel) else None
    uv: UnifiedVoice = model.model if isinstance(model, TrainingModel) else model
    if cfg is not None and cfg != uv.cfg:
        raise ValueError("export_checkpoint: cfg differs from the model's config; export with model.cfg")
    cfg = uv.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.input_dim != 1024 or cfg.emo_perceiver_dim != 1024:
        log.warning("input_dim/emo_perceiver_dim != 1024: the official code hard-codes 1024 and cannot load %s", out)

    sd = _cpu(uv.state_dict())
    atomic_write(out / "gpt.pth", lambda tmp: torch.save(sd, tmp))
    atomic_write(out / "gpt.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))

    base = {}
    if base_config is not None:
        base_path = Path(base_config)
        if not base_path.is_file():
            raise DataError(f"{base_path}: base config not found; pass the official checkpoints/config.yaml")
        base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
        if not isinstance(base, dict):
            raise DataError(f"{base_path}: top level must be a mapping")
    official = {**base, "gpt": official_gpt_section(cfg)}
    official.setdefault("gpt_checkpoint", "gpt.pth")
    atomic_write_text(out / "config.yaml", yaml.safe_dump(official, sort_keys=False, allow_unicode=True))
    atomic_write_text(
        out / "model_config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    )

    if heads is not None:
        hsd = _cpu({k: v for k, v in heads.state_dict().items() if not k.startswith("emotion_table.")})
        meta = {"n_speakers": str(heads.n_speakers), "emotion_labels": json.dumps(heads.emotion_table.labels)}
        atomic_write(out / "training_heads.safetensors", lambda tmp: save_file(hsd, tmp, metadata=meta))
        tsd = _cpu(heads.emotion_table.state_dict())
        tmeta = {"emotion_labels": json.dumps(heads.emotion_table.labels)}
        atomic_write(out / "emotion_table.safetensors", lambda tmp: save_file(tsd, tmp, metadata=tmeta))
    return out


# ----------------------------------------------------------------------------- loading an export


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _load_into(module: nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    check_state_dict(sd, module, source)
    module.load_state_dict(sd, strict=True)


def _load_module(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: not found; export with a TrainingModel to write it")
    _load_into(module, load_file(str(path), device="cpu"), path)


def load_emotion_table(table: EmotionTable, path: str | os.PathLike) -> None:
    """Load `emotion_table.safetensors` into `table`; its labels must equal the table's."""
    path = Path(path)
    if path.is_file():
        labels = json.loads(_metadata(path).get("emotion_labels", "null"))
        if labels != table.labels:
            raise DataError(f"{path}: emotion labels {labels} differ from the config's {table.labels}; set model.emotion_labels")
    _load_module(table, path)


def load_training_heads(heads: TrainingHeads, export_dir: str | os.PathLike) -> None:
    """Load `training_heads.safetensors` and `emotion_table.safetensors` of an export into `heads`."""
    export_dir = Path(export_dir)
    path = export_dir / "training_heads.safetensors"
    if path.is_file():
        n = int(_metadata(path).get("n_speakers", "-1"))
        if n != heads.n_speakers:
            raise DataError(f"{path}: trained for {n} speakers, the model has {heads.n_speakers}; use n_speakers={n}")
    parts = {"speaker_classifier": heads.speaker_classifier, "emotion_classifier": heads.emotion_classifier}
    head_part = nn.ModuleDict({k: v for k, v in parts.items() if v is not None})
    _load_module(head_part, path)
    load_emotion_table(heads.emotion_table, export_dir / "emotion_table.safetensors")


def load_export(export_dir: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """Rebuild what `export_checkpoint` wrote: a TrainingModel when the head sidecars exist, else a UnifiedVoice.
    The architecture comes from `model_config.yaml`."""
    from indextts_ray.config import load_config
    from indextts_ray.model.training import TrainingModel

    export_dir = Path(export_dir)
    cfg_path = export_dir / "model_config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{cfg_path}: not found; {export_dir} is not an export_checkpoint directory")
    cfg = load_config(cfg_path, schema=ModelConfig)
    uv = load_official(export_dir / "gpt.safetensors", cfg)
    heads_path = export_dir / "training_heads.safetensors"
    if not heads_path.is_file():
        return uv.to(device) if device is not None else uv
    tm = TrainingModel(cfg, int(_metadata(heads_path).get("n_speakers", "0")), model=uv)
    load_training_heads(tm.heads, export_dir)
    return tm.to(device) if device is not None else tm
