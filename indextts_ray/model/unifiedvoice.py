"""UnifiedVoice v2, the IndexTTS2 text -> semantic-code GPT, with the official parameter names and forward.

Layout of one training sequence (spec §7), per item:

    [ 32 speaker latents + emo_vec | speed row 1 | speed row 0 ]   conds, 34 rows, no position table
    [ start_text, t_0 .. t_{T-1}, stop_text ]                        text_pos rows 0..T+1
    [ start_mel,  c_0 .. c_{M-1}, stop_mel ]                         mel_pos rows 0..M+1

Text/code padding (index >= length) is replaced by the stop token; the whole thing is fully causal and
padding is not masked (it sits between a short text and its codes, visible to later positions, exactly as
in the official model). Position i of the text (mel) part predicts target i: the next text token (code),
the stop token after the last real one, and stop again for padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from indextts_ray.model.config import ModelConfig
from indextts_ray.model.conformer import ConformerEncoder
from indextts_ray.model.gpt2 import GPT2Stack
from indextts_ray.model.perceiver import PerceiverResampler


class LearnedPositionEmbeddings(nn.Module):
    """`*_pos_embedding.emb`: rows 0..L-1 for a length-L part."""

    def __init__(self, seq_len: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        if length > self.emb.num_embeddings:
            raise ValueError(f"sequence part of {length} positions exceeds the position table ({self.emb.num_embeddings})")
        return self.emb(torch.arange(length, device=device))  # (L, D)


@dataclass
class GPTOutput:
    """final_norm'd hidden states of the text and mel parts, with the aligned targets (see module doc)."""

    text_hidden: torch.Tensor  # (B, T+2, D)
    mel_hidden: torch.Tensor  # (B, M+2, D)
    text_targets: torch.Tensor  # (B, T+2) long
    mel_targets: torch.Tensor  # (B, M+2) long


def fill_after_length(ids: torch.Tensor, lengths: torch.Tensor, value: int) -> torch.Tensor:
    """ids with every index >= length replaced by `value` (a new tensor)."""
    pad = torch.arange(ids.size(1), device=ids.device)[None, :] >= lengths.to(ids.device)[:, None]
    return ids.masked_fill(pad, value)


def aligned_inputs_and_targets(
    ids: torch.Tensor, lengths: torch.Tensor, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids -> inputs [start, x.., stop] and targets [x.., stop, stop], both (B, L+2)."""
    ids = F.pad(fill_after_length(ids, lengths, stop), (0, 1), value=stop)  # (B, L+1)
    return F.pad(ids, (1, 0), value=start), F.pad(ids, (0, 1), value=stop)


class UnifiedVoice(nn.Module):
    """The official UnifiedVoice v2 network: `state_dict()` has exactly the official keys, shapes and dtypes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        cm, em = cfg.condition_module, cfg.emo_condition_module
        # Registration order = official state-dict order (d7be630), so saved files list keys like the original.
        self.conditioning_encoder = ConformerEncoder(cfg.input_dim, cm)
        self.perceiver_encoder = PerceiverResampler(
            d, cm.output_size, cfg.condition_num_latent, heads=cm.attention_heads, ff_mult=cm.perceiver_mult
        )
        self.emo_conditioning_encoder = ConformerEncoder(cfg.input_dim, em)
        self.emo_perceiver_encoder = PerceiverResampler(
            cfg.emo_perceiver_dim, em.output_size, 1, heads=em.attention_heads, ff_mult=em.perceiver_mult
        )
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, d)
        self.emo_layer = nn.Linear(d, d)
        self.emovec_layer = nn.Linear(cfg.emo_perceiver_dim, d)
        self.mel_embedding = nn.Embedding(cfg.number_mel_codes, d)
        self.gpt = GPT2Stack(d, cfg.layers, cfg.heads, cfg.dropout, cfg.checkpointing)
        self.mel_pos_embedding = LearnedPositionEmbeddings(cfg.max_mel_tokens + 2 + cfg.max_conditioning_inputs, d)
        self.text_pos_embedding = LearnedPositionEmbeddings(cfg.max_text_tokens + 2, d)
        self.final_norm = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, cfg.text_vocab_size)
        self.mel_head = nn.Linear(d, cfg.number_mel_codes)
        self.speed_emb = nn.Embedding(2, d)
        # Official init (spec §9): GPT-2 scheme for the token tables, zeros for speed_emb, defaults elsewhere.
        nn.init.normal_(self.text_embedding.weight, std=0.02)
        nn.init.normal_(self.mel_embedding.weight, std=0.02)
        nn.init.zeros_(self.speed_emb.weight)

    # ------------------------------------------------------------------ conditioning

    def get_speaker_latents(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Speaker prompt features (B, T, input_dim) -> (B, condition_num_latent, model_dim)."""
        x, mask = self.conditioning_encoder(feats, lengths)  # (B, T', c), (B, 1, T')
        return self.perceiver_encoder(x, mask.squeeze(1))

    def get_emovec(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Emotion prompt features (B, T, input_dim) -> emo_vec (B, model_dim), differentiable end to end."""
        x, mask = self.emo_conditioning_encoder(feats, lengths)
        emo = self.emo_perceiver_encoder(x, mask.squeeze(1)).squeeze(1)  # (B, emo_perceiver_dim)
        return self.emo_layer(self.emovec_layer(emo))

    def merge_emovec(
        self,
        speech_conditioning_latent: torch.Tensor,
        emo_speech_conditioning_latent: torch.Tensor,
        cond_lengths: torch.Tensor,
        emo_cond_lengths: torch.Tensor,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        """base + alpha * (emo - base), base = emo_vec of the speaker prompt (official `merge_emovec`)."""
        emo_vec = self.get_emovec(emo_speech_conditioning_latent, emo_cond_lengths)
        base = self.get_emovec(speech_conditioning_latent, cond_lengths)
        return base + alpha * (emo_vec - base)

    def build_conds(self, speaker_latents: torch.Tensor, emo_vec: torch.Tensor) -> torch.Tensor:
        """(B, n, D) latents + (B, D) emo_vec -> (B, n + 2, D): latents + emo_vec, speed row 1, speed row 0."""
        b = speaker_latents.size(0)
        zeros = torch.zeros(b, dtype=torch.long, device=speaker_latents.device)
        # The official rows do not depend on `use_speed` values: row 1 ("half") then row 0.
        return torch.cat(
            (
                speaker_latents + emo_vec.unsqueeze(1),
                self.speed_emb(zeros + 1).unsqueeze(1),
                self.speed_emb(zeros).unsqueeze(1),
            ),
            dim=1,
        )

    # ------------------------------------------------------------------ GPT

    def run_gpt(
        self,
        conds: torch.Tensor,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
    ) -> GPTOutput:
        """Build the official training sequence and run the GPT; does not modify its inputs."""
        cfg = self.cfg
        text_in, text_tgt = aligned_inputs_and_targets(text_ids, text_lengths, cfg.start_text_token, cfg.stop_text_token)
        mel_in, mel_tgt = aligned_inputs_and_targets(codes, code_lengths, cfg.start_mel_token, cfg.stop_mel_token)
        text_emb = self.text_embedding(text_in) + self.text_pos_embedding(text_in.size(1), text_in.device)  # (B, T+2, D)
        mel_emb = self.mel_embedding(mel_in) + self.mel_pos_embedding(mel_in.size(1), mel_in.device)  # (B, M+2, D)
        emb = torch.cat((conds, text_emb, mel_emb), dim=1)  # (B, n+2 + T+2 + M+2, D)
        enc = self.final_norm(self.gpt(emb)[:, conds.size(1) :])
        t = text_emb.size(1)
        return GPTOutput(enc[:, :t], enc[:, t:], text_tgt, mel_tgt)

    def compute_logits(
        self,
        conds: torch.Tensor,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Official `get_logits` values: text_logits (B, T+2, Vt), mel_logits (B, M+2, Vm), text_targets,
        mel_targets. (The official function returns logits permuted to (B, V, L).)"""
        out = self.run_gpt(conds, text_ids, text_lengths, codes, code_lengths)
        return self.text_head(out.text_hidden), self.mel_head(out.mel_hidden), out.text_targets, out.mel_targets

    def forward(
        self,
        speech_conditioning_latent: torch.Tensor,
        text_inputs: torch.Tensor,
        text_lengths: torch.Tensor,
        mel_codes: torch.Tensor,
        mel_codes_lengths: torch.Tensor,
        emo_speech_conditioning_latent: torch.Tensor | None,
        cond_mel_lengths: torch.Tensor | None = None,
        emo_cond_mel_lengths: torch.Tensor | None = None,
        emo_vec: torch.Tensor | None = None,
        use_speed: torch.Tensor | None = None,
        do_spk_cond: bool = False,
    ) -> torch.Tensor:
        """Official `UnifiedVoice.forward`: returns the mel latent (B, M, D) fed to s2mel.

        With `do_spk_cond=False` the first argument is already (B, n, D) speaker latents; with True it is
        (B, T, input_dim) features. Like the official code, entries of `text_inputs` / `mel_codes` at index >=
        length are overwritten with the stop token in place. `use_speed` only contributes its batch size (the
        official rows do not depend on it); None lengths mean "all frames valid".
        """
        if do_spk_cond:
            if cond_mel_lengths is None:
                cond_mel_lengths = _full_lengths(speech_conditioning_latent)
            speaker_latents = self.get_speaker_latents(speech_conditioning_latent, cond_mel_lengths)
        else:
            speaker_latents = speech_conditioning_latent
        if emo_vec is None:
            if emo_speech_conditioning_latent is None:
                raise ValueError("pass emo_speech_conditioning_latent or emo_vec")
            if emo_cond_mel_lengths is None:
                emo_cond_mel_lengths = _full_lengths(emo_speech_conditioning_latent)
            emo_vec = self.get_emovec(emo_speech_conditioning_latent, emo_cond_mel_lengths)
        # Official side effect, kept for drop-in compatibility (the training path never calls this).
        with torch.no_grad():
            text_inputs.copy_(fill_after_length(text_inputs, text_lengths, self.cfg.stop_text_token))
            mel_codes.copy_(fill_after_length(mel_codes, mel_codes_lengths, self.cfg.stop_mel_token))
        conds = self.build_conds(speaker_latents, emo_vec)
        out = self.run_gpt(conds, text_inputs, text_lengths, mel_codes, mel_codes_lengths)
        return out.mel_hidden[:, :-2]


def _full_lengths(feats: torch.Tensor) -> torch.Tensor:
    return torch.full((feats.size(0),), feats.size(1), dtype=torch.long, device=feats.device)
