"""Official checkpoint import/export, readable key diffs, text-vocabulary growth."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from indextts_ray.errors import DataError
from indextts_ray.model import LossWeights, TrainingModel, UnifiedVoice
from indextts_ray.model.checkpoint_io import (
    export_checkpoint,
    load_export,
    load_init_checkpoint,
    load_official,
    official_gpt_section,
    read_checkpoint,
    resize_text_vocab,
)

from .conftest import make_batch, model_cfg


def trained_like(cfg, n_speakers=3) -> TrainingModel:
    """A TrainingModel whose every tensor differs from a fresh init (so a missed key cannot pass)."""
    torch.manual_seed(0)
    tm = TrainingModel(cfg, n_speakers=n_speakers)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return tm


def assert_same_tensors(a: dict, b: dict, ordered: bool = True) -> None:
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)  # safetensors stores keys sorted
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_export_import_round_trip_is_bit_identical(tiny_cfg, tmp_path):
    tm = trained_like(tiny_cfg)
    out = export_checkpoint(tm, tmp_path / "export", tiny_cfg)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml", "emotion_table.safetensors", "gpt.pth", "gpt.safetensors", "model_config.yaml",
                     "training_heads.safetensors"]  # fmt: skip
    official_keys = list(tm.model.state_dict())
    assert list(torch.load(out / "gpt.pth", weights_only=True)) == official_keys  # no head keys leak in
    assert_same_tensors(load_file(out / "gpt.safetensors"), tm.model.state_dict(), ordered=False)
    back = load_export(out)
    assert isinstance(back, TrainingModel) and back.heads.n_speakers == 3
    assert_same_tensors(back.state_dict(), tm.state_dict())
    # and into an existing model, the way the training loop starts a stage
    torch.manual_seed(5)
    fresh = TrainingModel(tiny_cfg, n_speakers=3)
    load_init_checkpoint(fresh, out)
    assert_same_tensors(fresh.state_dict(), tm.state_dict())


def test_official_config_yaml(tiny_cfg, tmp_path):
    base = tmp_path / "official_config.yaml"
    base.write_text("dataset:\n  bpe_model: bpe.model\ngpt:\n  model_dim: 1\ngpt_checkpoint: gpt.pth\nw2v_stat: x.pt\n")
    out = export_checkpoint(UnifiedVoice(tiny_cfg), tmp_path / "e", base_config=base)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert list(cfg) == ["dataset", "gpt", "gpt_checkpoint", "w2v_stat"]
    gpt = cfg["gpt"]
    assert gpt["model_dim"] == 32 and gpt["layers"] == 2 and gpt["number_mel_codes"] == 66
    assert gpt["condition_type"] == "conformer_perceiver" and gpt["condition_num_latent"] == 4
    assert gpt["emo_condition_module"] == {"output_size": 32, "linear_units": 64, "attention_heads": 2,
                                           "num_blocks": 1, "input_layer": "conv2d2", "perceiver_mult": 2}  # fmt: skip
    assert "input_dim" not in gpt and "types" not in gpt  # not official constructor arguments / default
    assert not (out / "training_heads.safetensors").exists()  # bare UnifiedVoice: no sidecars


def test_official_gpt_section_has_exactly_the_official_fields():
    gpt = official_gpt_section(model_cfg("indextts2"))
    assert list(gpt) == ["model_dim", "max_mel_tokens", "max_text_tokens", "heads", "use_mel_codes_as_input",
                         "mel_length_compression", "layers", "number_text_tokens", "number_mel_codes",
                         "start_mel_token", "stop_mel_token", "start_text_token", "stop_text_token",
                         "train_solo_embeddings", "condition_type", "condition_module", "emo_condition_module"]  # fmt: skip


@pytest.mark.parametrize("wrap", ["bare", "model", "ddp_compiled"])
def test_import_accepts_wrappings_and_drops_aliases(tiny_cfg, tmp_path, wrap):
    src = trained_like(tiny_cfg).model
    sd = src.state_dict()
    if wrap == "ddp_compiled":
        sd = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    # A file saved after the official post_init_gpt2_config carries these aliases.
    sd["gpt.wte.weight"] = src.mel_embedding.weight.detach()
    sd["inference_model.lm_head.1.weight"] = src.mel_head.weight.detach()
    torch.save({"model": sd} if wrap == "model" else sd, tmp_path / "gpt.pth")
    loaded = load_official(tmp_path / "gpt.pth", tiny_cfg)
    assert_same_tensors(loaded.state_dict(), src.state_dict())


def test_wrong_shape_and_missing_key_give_a_readable_diff(tiny_cfg, tmp_path):
    sd = UnifiedVoice(tiny_cfg).state_dict()
    del sd["mel_head.bias"]
    sd["gpt.h.0.ln_1.weight"] = torch.ones(48)
    sd["speaker_classifier.net.0.weight"] = torch.ones(2, 2)
    torch.save(sd, tmp_path / "gpt.pth")
    with pytest.raises(DataError) as e:
        load_official(tmp_path / "gpt.pth", tiny_cfg)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "gpt.pth") in msg
    assert "1 missing [mel_head.bias]" in msg
    assert "1 unexpected [speaker_classifier.net.0.weight]" in msg
    assert "1 shape mismatches [gpt.h.0.ln_1.weight: checkpoint 48 vs model 32]" in msg
    assert "Fix: set the model config to the checkpoint's values (model_dim=32 number_text_tokens=256" in msg


def test_official_sized_checkpoint_into_tiny_config_names_the_fix(tiny_cfg, tmp_path):
    big = UnifiedVoice(tiny_cfg.model_copy(update={"layers": 3, "number_mel_codes": 70}))
    torch.save(big.state_dict(), tmp_path / "gpt.pth")
    with pytest.raises(DataError, match=r"3 shape mismatches.*number_mel_codes=70 layers=3") as e:
        load_official(tmp_path / "gpt.pth", tiny_cfg)
    assert "12 unexpected [gpt.h.2.ln_1.weight" in str(e.value)


def test_unreadable_files_fail_with_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a weights-only PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(DataError, match="expected a state dict"):
        read_checkpoint(tmp_path / "list.pth")


def test_resize_text_vocab_keeps_old_rows_and_old_logits(tiny_cfg):
    tm = trained_like(tiny_cfg).eval()
    m = tm.model
    batch = make_batch(tiny_cfg)  # ids < 256: all old
    conds = torch.zeros(2, tiny_cfg.conditioning_positions, tiny_cfg.model_dim)
    args = (conds, batch["text_ids"], batch["text_lengths"], batch["codes"], batch["code_lengths"])
    with torch.no_grad():
        text_before, mel_before, _, _ = m.compute_logits(*args)
    old_emb, old_head = m.text_embedding.weight.clone(), m.text_head.weight.clone()
    keys_before = list(m.state_dict())
    resize_text_vocab(m, 300)
    assert m.cfg.number_text_tokens == 300 and tm.cfg.number_text_tokens == 300
    assert m.text_embedding.weight.shape == (301, 32) and m.text_head.bias.shape == (301,)
    assert torch.equal(m.text_embedding.weight[:257], old_emb) and torch.equal(m.text_head.weight[:257], old_head)
    torch.testing.assert_close(m.text_embedding.weight[299], old_emb.mean(0))
    assert list(m.state_dict()) == keys_before  # same key order
    with torch.no_grad():
        text_after, mel_after, _, _ = m.compute_logits(*args)
    assert torch.equal(text_after[..., :257], text_before) and torch.equal(mel_after, mel_before)
    assert text_after.shape[-1] == 301
    # a new id changes the hidden states (its row is the mean, not any old row)
    ids = batch["text_ids"].clone()
    ids[0, 0] = 280
    with torch.no_grad():
        changed, _, _, _ = m.compute_logits(conds, ids, *args[2:])
    assert (changed - text_after).abs().max() > 1e-4
    with pytest.raises(ValueError, match="cannot shrink"):
        resize_text_vocab(m, 100)
    tm(make_batch(tiny_cfg), LossWeights())["loss"].backward()  # still trains


def test_grown_tokenizer_loads_an_old_checkpoint(tiny_cfg, tmp_path):
    src = trained_like(tiny_cfg).model
    torch.save(src.state_dict(), tmp_path / "gpt.pth")
    grown = tiny_cfg.model_copy(update={"number_text_tokens": 260})
    m = load_official(tmp_path / "gpt.pth", grown)
    assert m.text_head.weight.shape == (261, 32)
    assert torch.equal(m.text_head.weight[:257], src.text_head.weight)
    assert torch.equal(m.text_head.bias[257:], src.text_head.bias.mean().expand(4))


def test_init_from_export_with_new_speaker_mapping(tiny_cfg, tmp_path):
    out = export_checkpoint(trained_like(tiny_cfg, n_speakers=3), tmp_path / "stage1")
    torch.manual_seed(1)
    tm = TrainingModel(tiny_cfg, n_speakers=5)
    fresh_spk = tm.heads.speaker_classifier.net[0].weight.clone()
    load_init_checkpoint(tm, out)
    src = load_file(out / "training_heads.safetensors")
    assert torch.equal(tm.heads.emotion_classifier.net[0].weight, src["emotion_classifier.net.0.weight"])
    assert torch.equal(tm.heads.speaker_classifier.net[0].weight, fresh_spk)  # 3 != 5 speakers: stays fresh
    table = load_file(out / "emotion_table.safetensors")
    assert torch.equal(tm.heads.emotion_table.table.weight, table["table.weight"])
    other_labels = tiny_cfg.model_copy(update={"emotion_labels": ["calm", "angry"]})
    with pytest.raises(DataError, match="emotion labels"):
        load_init_checkpoint(TrainingModel(other_labels, n_speakers=3), out)
    assert yaml.safe_load((out / "model_config.yaml").read_text())["emotion_labels"][0] == "neutral"


def test_export_refuses_a_config_that_does_not_describe_the_weights(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="differs"):
        export_checkpoint(UnifiedVoice(tiny_cfg), tmp_path, tiny_cfg.model_copy(update={"layers": 3}))
