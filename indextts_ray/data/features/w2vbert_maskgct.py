"""`w2vbert-maskgct` extractor: the real IndexTTS2 inputs, from local copies of the released weights.

    wav 16 kHz ─ SeamlessM4TFeatureExtractor ─ (1, T, 160) + mask ─ Wav2Vec2BertModel (eval, first `layer`
    layers only) ─ hidden_states[layer] (1, T, H) ─ (x - mean) / sqrt(var) ─ features (T', H)
                                                                           └─ SemanticCodec.quantize ─ codes (T',)

As in IndexTTS2 `infer_v2` (spec: /work/shared/spec/SEMANTIC_FEATURES.md, sections 1–2): one utterance at a
time (the codec's non-causal convs would let padding change the last codes of a batch), the attention mask is
always passed, `hidden_states[17]` is the output of the 17th conformer layer, normalisation has no epsilon.
T = ceil(n / 2) for n fbank frames; when n is odd the last frame is padding. It still goes through the models
(as in `infer_v2`), but only the T' = floor(n / 2) real frames are returned, so features and codes describe
real audio only (community trainers also cut codes to the mask).

Only 17 of w2v-BERT's 24 layers are loaded: layers after `layer` cannot change `hidden_states[layer]`
(measured bit-identical in the spec), and this saves 7/24 of the compute.

`SemanticCodec` re-implements the encoder + quantiser of MaskGCT's RepCodec with the released state-dict
names (`semantic_codec/model.safetensors`, 239 keys incl. the unused decoder, weight-norm `weight_g`/`weight_v`).
Sizes are read from the file, so the tests' tiny random codecs load through the same code.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from indextts_ray.data.config import FeaturesConfig
from indextts_ray.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FRAME_RATE = 50
MIN_SAMPLES = 400  # one 25 ms fbank window


# ----------------------------------------------------------------------------- semantic codec (RepCodec)


class ConvNeXtBlock(nn.Module):
    """Vocos ConvNeXt block (no AdaLayerNorm): depthwise conv 7 → LN → Linear → GELU → Linear → × gamma, residual."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))  # registered first, as in the released file
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.norm(self.dwconv(x).transpose(1, 2))  # (B, T, C)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.gamma
        return x + y.transpose(1, 2)


class VocosBackbone(nn.Module):
    """Conv1d(in → dim, k 7) → LN → ConvNeXt blocks → LN; (B, in, T) → (B, T, dim)."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class WNConv1d(nn.Module):
    """1x1 Conv1d with legacy weight norm, stored as `bias`, `weight_g`, `weight_v` (the released names/order).

    Effective weight W[o] = g[o] · v[o] / ‖v[o]‖₂ (norm over all dims but 0), as `torch.nn.utils.weight_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # placeholder values: the weights always come from a file (random init would also be slow on meta)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.ones(out_channels, in_channels, 1))

    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=(1, 2), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T)
        return F.conv1d(x, self.weight(), self.bias)


class FactorizedVQ(nn.Module):
    """One factorised VQ stage: project to `codebook_dim`, cosine nearest code, raw code row, project back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_project = WNConv1d(input_dim, codebook_dim)
        self.out_project = WNConv1d(codebook_dim, input_dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim, _weight=torch.zeros(codebook_size, codebook_dim))

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, T) → (B, T) int64: argmax of −‖ê − ĉ‖² over L2-normalised latents and codes (Amphion's formula)."""
        z_e = self.in_project(z)  # (B, d, T)
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))  # (B*T, d)
        cb = F.normalize(self.codebook.weight)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ cb.t() + cb.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1)[1].reshape(z.shape[0], -1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) codes → (B, D, T) quantised embedding (raw, un-normalised codebook rows)."""
        return self.out_project(self.codebook(codes).transpose(1, 2))


class ResidualVQ(nn.Module):
    """Container that gives the released key prefix `quantizer.quantizers.0.`; IndexTTS2 uses one stage."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList([FactorizedVQ(input_dim, codebook_size, codebook_dim)])


class SemanticCodec(nn.Module):
    """MaskGCT semantic codec (RepCodec), encoder + quantiser; `decoder` exists only for the strict key set."""

    def __init__(self, codebook_size: int = 8192, hidden_size: int = 1024, codebook_dim: int = 8,
                 vocos_dim: int = 384, vocos_intermediate_dim: int = 2048, vocos_num_layers: int = 12):
        super().__init__()
        self.codebook_size, self.hidden_size = codebook_size, hidden_size

        def backbone() -> nn.Sequential:
            return nn.Sequential(VocosBackbone(hidden_size, vocos_dim, vocos_intermediate_dim, vocos_num_layers),
                                 nn.Linear(vocos_dim, hidden_size))

        self.encoder = backbone()
        self.decoder = backbone()
        self.quantizer = ResidualVQ(hidden_size, codebook_size, codebook_dim)

    @torch.no_grad()
    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H) normalised w2v-BERT features → codes (B, T) int64, embedding (B, T, H)."""
        z = self.encoder(x.transpose(1, 2)).transpose(1, 2)  # (B, H, T)
        vq = self.quantizer.quantizers[0]
        codes = vq.indices(z)
        return codes, vq.embed(codes).transpose(1, 2)


_BLOCK = re.compile(r"^encoder\.0\.convnext\.(\d+)\.gamma$")


def codec_sizes(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """SemanticCodec constructor arguments read from the tensor shapes of a codec state dict."""
    try:
        codebook_size, codebook_dim = shapes["quantizer.quantizers.0.codebook.weight"]
        vocos_dim, hidden_size, _ = shapes["encoder.0.embed.weight"]
        vocos_intermediate_dim = shapes["encoder.0.convnext.0.pwconv1.weight"][0]
    except (KeyError, ValueError) as e:
        raise DataError(f"not a MaskGCT semantic codec state dict (missing or odd key {e}); expected "
                        "amphion/MaskGCT semantic_codec/model.safetensors") from None
    blocks = sorted(int(m.group(1)) for k in shapes if (m := _BLOCK.match(k)))
    return {"codebook_size": codebook_size, "hidden_size": hidden_size, "codebook_dim": codebook_dim,
            "vocos_dim": vocos_dim, "vocos_intermediate_dim": vocos_intermediate_dim, "vocos_num_layers": len(blocks)}


def load_semantic_codec(path: str | Path, device: str = "cpu") -> SemanticCodec:
    """Build a `SemanticCodec` sized from `path` (safetensors) and load it strictly; eval mode."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"semantic codec not found: {path} (data.features.semantic_codec_path: the "
                        "amphion/MaskGCT semantic_codec/model.safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError for non-safetensors files
        raise DataError(f"{path}: cannot read as safetensors ({e})") from None
    model = SemanticCodec(**codec_sizes({k: tuple(v.shape) for k, v in state.items()}))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        raise DataError(f"{path}: state dict does not match the MaskGCT semantic codec: "
                        f"missing {len(missing)} [{show(missing)}], unexpected {len(unexpected)} [{show(unexpected)}], "
                        f"wrong shape {len(wrong)} [{show(wrong)}]; use semantic_codec/model.safetensors from amphion/MaskGCT")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().to(device)


# ----------------------------------------------------------------------------- w2v-BERT 2.0


def load_stats(path: str | Path, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`wav2vec2bert_stats.pt`: a dict with exactly `mean` and `var`, each (hidden_size,), var > 0."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"w2v-BERT stats not found: {path} (data.features.w2v_stat_path: wav2vec2bert_stats.pt)")
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors: not a torch.save file of plain tensors
        raise DataError(f"{path}: cannot load with torch.load(weights_only=True) ({e})") from None
    if not isinstance(stats, dict) or set(stats) != {"mean", "var"}:
        keys = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise DataError(f"{path}: expected a dict with keys mean and var, got {keys}")
    mean, var = (torch.as_tensor(stats[k], dtype=torch.float32) for k in ("mean", "var"))
    if mean.shape != (hidden_size,) or var.shape != (hidden_size,):
        raise DataError(f"{path}: mean {tuple(mean.shape)} / var {tuple(var.shape)} must both be ({hidden_size},), "
                        "the w2v-BERT hidden size")
    if not bool((var > 0).all()):
        raise DataError(f"{path}: var has values <= 0")
    return mean, var


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a table of every unused layer-18+ key; we check the loading report ourselves."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_w2vbert(model_dir: str | Path, layer: int, device: str = "cpu"):
    """(feature extractor, model with the first `layer` layers) from a local facebook/w2v-bert-2.0 folder.

    Strict: any missing or wrong-shape weight is an error (transformers would initialise it randomly); the
    only unused weights allowed are those of the layers after `layer`.
    """
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    model_dir = Path(model_dir)
    need = ("config.json", "preprocessor_config.json")
    if not model_dir.is_dir() or any(not (model_dir / f).is_file() for f in need):
        raise DataError(f"{model_dir}: not a w2v-BERT 2.0 folder (needs {', '.join(need)} and model.safetensors; "
                        "data.features.w2vbert_dir = a local copy of facebook/w2v-bert-2.0)")
    n_layers = Wav2Vec2BertConfig.from_pretrained(model_dir, local_files_only=True).num_hidden_layers
    if not 1 <= layer <= n_layers:
        raise DataError(f"data.features.layer {layer} is not in 1..{n_layers} (the model's layers)")
    try:
        with _quiet_transformers():
            fe = SeamlessM4TFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
            model, info = Wav2Vec2BertModel.from_pretrained(
                model_dir, local_files_only=True, num_hidden_layers=layer, dtype=torch.float32,
                output_loading_info=True)
    except OSError as e:  # missing/corrupt weight file
        raise DataError(f"{model_dir}: cannot load w2v-BERT ({e})") from None
    later = re.compile(r"^encoder\.layers\.(\d+)\.")
    unexpected = [k for k in info["unexpected_keys"] if not ((m := later.match(k)) and int(m.group(1)) >= layer)]
    bad = list(info["missing_keys"]) + unexpected + [str(k) for k in info["mismatched_keys"]] + list(info["error_msgs"])
    if bad:
        raise DataError(f"{model_dir}: w2v-BERT weights do not match its config.json: {', '.join(map(str, bad[:4]))}"
                        f"{f' (+{len(bad) - 4} more)' if len(bad) > 4 else ''}; use the facebook/w2v-bert-2.0 files")
    if fe.feature_size != 80 or fe.stride != 2 or fe.sampling_rate != SAMPLE_RATE:
        raise DataError(f"{model_dir}/preprocessor_config.json: expected 80 mel bins, stride 2, 16 kHz "
                        f"(got {fe.feature_size}, {fe.stride}, {fe.sampling_rate})")
    return fe, model.eval().to(device)


# ----------------------------------------------------------------------------- the extractor


class W2VBertMaskGCTExtractor:
    """Normalised w2v-BERT 2.0 `hidden_states[layer]` features and MaskGCT semantic codes, both at 50 Hz."""

    frame_rate = FRAME_RATE

    def __init__(self, fe, model, mean: torch.Tensor, var: torch.Tensor, codec: SemanticCodec, layer: int,
                 device: str = "cpu"):
        self.fe, self.model, self.codec, self.layer, self.device = fe, model, codec, layer, device
        self.mean, self.std = mean.to(device), var.sqrt().to(device)
        self.dim = int(model.config.hidden_size)
        self.codebook_size = int(codec.codebook_size)

    @torch.no_grad()
    def _normalised(self, wav16k: np.ndarray) -> tuple[torch.Tensor, int]:
        """(1, T, dim) normalised features of all T frames, and the number of real (unmasked) frames."""
        wav = np.asarray(wav16k, dtype=np.float32)
        if wav.ndim != 1 or wav.size < MIN_SAMPLES:
            raise ValueError(f"need mono 16 kHz audio of >= {MIN_SAMPLES} samples, got shape {wav.shape}")
        inputs = self.fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        mask = inputs["attention_mask"].to(self.device)
        out = self.model(input_features=inputs["input_features"].to(self.device), attention_mask=mask,
                         output_hidden_states=True)
        h = out.hidden_states[self.layer]  # (1, T, dim); index 0 is the feature projection
        return (h - self.mean) / self.std, int(mask.sum())

    def features(self, wav16k: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz → (T', dim) float32, T' = real 20 ms frames."""
        feats, valid = self._normalised(wav16k)
        return feats[0, :valid].float().cpu().numpy()

    def codes(self, wav16k: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz → (T',) int32 semantic codes in [0, codebook_size)."""
        return self.extract(wav16k)[1]

    def extract(self, wav16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and codes of the same audio with one w2v-BERT pass."""
        feats, valid = self._normalised(wav16k)
        codes, _ = self.codec.quantize(feats)  # the codec sees all T frames, as in infer_v2
        return feats[0, :valid].float().cpu().numpy(), codes[0, :valid].cpu().numpy().astype(np.int32)


def _check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"data.features.device is {device!r} but CUDA is not available here; set it to cpu")
    return device


def build(cfg: FeaturesConfig, work_dir: Path) -> W2VBertMaskGCTExtractor:
    """Load w2v-BERT, its stats and the semantic codec from the local paths in `cfg` (nothing is downloaded)."""
    del work_dir  # nothing is fitted or cached: the weights are given
    missing = [k for k in ("w2vbert_dir", "w2v_stat_path", "semantic_codec_path") if not getattr(cfg, k)]
    if missing:
        raise DataError(f"features.kind w2vbert-maskgct needs data.features.{', data.features.'.join(missing)} "
                        "(local copies of facebook/w2v-bert-2.0, wav2vec2bert_stats.pt, MaskGCT semantic_codec)")
    device = _check_device(cfg.device)
    fe, model = load_w2vbert(cfg.w2vbert_dir, cfg.layer, device)
    hidden = int(model.config.hidden_size)
    mean, var = load_stats(cfg.w2v_stat_path, hidden)
    codec = load_semantic_codec(cfg.semantic_codec_path, device)
    if codec.hidden_size != hidden:
        raise DataError(f"{cfg.semantic_codec_path}: codec input size {codec.hidden_size} != w2v-BERT hidden size "
                        f"{hidden}; the two files do not belong together")
    log.info("w2vbert-maskgct: w2v-BERT %s (hidden_states[%d], dim %d), codec %s (%d codes) on %s", cfg.w2vbert_dir,
             cfg.layer, hidden, cfg.semantic_codec_path, codec.codebook_size, device)
    return W2VBertMaskGCTExtractor(fe, model, mean, var, codec, cfg.layer, device)
