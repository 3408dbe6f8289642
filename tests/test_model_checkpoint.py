"""STAR model folders, the upstream converter and the paper-size presets.

Tolerance: a loaded or converted model must give the same logits as the model it came from with atol 0 (same fp32
weights, same computation); preset parameter counts must match the digest (research/paper.md §2.1) within 1%.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from star.chat import t2i_row
from star.checkpoint import WEIGHTS_NAME, convert_upstream
from star.cli import main as cli_main
from star.model import STAR, Condition

from conftest import tiny_vq_config



def trained_model(make_star, seed: int = 3) -> STAR:
    """A tiny STAR whose trained parts no longer equal their initialisation."""
    model = make_star(seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.stacks.parameters()) + list(model.adapter.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def logits_of(model: STAR) -> torch.Tensor:
    tok, sp = model.base.tokenizer, model.special
    cond = Condition.from_rows([t2i_row(tok, sp, "a red cube"), t2i_row(tok, sp, "remove the ball")], sp.end_of_text)
    codes = torch.arange(32).view(2, 16) % 64
    with torch.no_grad():
        return model(cond, codes, drop_prompt=torch.tensor([False, True])).logits


def test_save_and_load_round_trip_is_strict(make_star, tmp_path):
    model = trained_model(make_star)
    folder = tmp_path / "star"
    model.save_pretrained(folder)
    saved = load_file(str(folder / WEIGHTS_NAME))
    assert set(saved) == set(model.trainable_state_dict()), "only stacks, adapter and head are saved"
    assert not any(k.startswith(("base.", "vq.")) for k in saved)
    config = json.loads((folder / "config.json").read_text())
    assert config["base"] == model.config.base and config["vq"] == model.config.vq, "frozen parts are referenced"
    loaded = STAR.from_pretrained(folder)
    assert torch.equal(logits_of(loaded), logits_of(model))

    del saved["head.proj.bias"]
    saved["head.extra"] = torch.zeros(1)
    save_file(saved, str(folder / WEIGHTS_NAME))
    with pytest.raises(KeyError, match=r"missing \(1\): head.proj.bias[\s\S]*unexpected \(1\): head.extra"):
        STAR.from_pretrained(folder)


def upstream_state_dict(model: STAR) -> dict[str, torch.Tensor]:
    """An upstream-shaped STAR-*.pt state dict (upstream key names) holding `model`'s trained weights."""
    state = {f"stacked_ar.model.{k}": v for k, v in model.stacks[0].decoder.state_dict().items()}
    state |= {f"pixel_adapter.{k}": v for k, v in model.adapter.state_dict().items()}
    state |= {"pixel_output_head.weight": model.head.proj.weight, "pixel_output_head.bias": model.head.proj.bias}
    # Groups the release carries that are not part of this folder.
    state |= {"llm.model.norm.weight": model.base.language_model.norm.weight,
              "pixel_encoder.quantize.embedding.weight": model.vq.quantize.embedding.weight,
              "diffusion_decoder.transformer.x_embedder.weight": torch.zeros(4, 4),
              "stacked_ar.lm_head.weight": torch.zeros(8, 64)}
    return {k: v.detach().clone() for k, v in state.items()}


def test_convert_upstream_reproduces_the_forward(make_star, tiny_base_dir, tmp_path):
    model = trained_model(make_star)
    assert "stacked_ar.model.layers.1.self_attn.q_proj.weight" in upstream_state_dict(model)
    torch.save({"state_dict": upstream_state_dict(model), "epoch": 3}, tmp_path / "STAR-tiny.pt")
    torch.save(model.vq.state_dict(), tmp_path / "VQ-Model.pt")

    out, report = convert_upstream(tmp_path / "STAR-tiny.pt", tiny_base_dir, tmp_path / "converted",
                                   vq=tmp_path / "VQ-Model.pt", vq_config=tiny_vq_config())
    assert report.ok and report.loaded == len(model.trainable_state_dict())
    assert any("diffusion decoder" in line for line in report.ignored), "skipped groups are reported"
    assert any("frozen base" in line for line in report.ignored)
    converted = STAR.from_pretrained(out)
    assert converted.config.stacks[0].num_layers == 2 and converted.config.adapter.depth == 2
    assert torch.equal(logits_of(converted), logits_of(model)), "the converted model computes the same logits"
    assert all(torch.equal(a, b) for a, b in zip(converted.vq.state_dict().values(), model.vq.state_dict().values()))

    # Strict accounting: an unknown key or a missing tensor stops the conversion.
    state = upstream_state_dict(model)
    state["pixel_adapter.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="pixel_adapter.extra.weight"):
        convert_upstream(tmp_path / "bad.pt", tiny_base_dir, tmp_path / "bad", vq=out / "vq")
    state = upstream_state_dict(model)
    del state["stacked_ar.model.layers.0.mlp.up_proj.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="stacks.0.decoder.layers.0.mlp.up_proj.weight"):
        convert_upstream(tmp_path / "bad.pt", tiny_base_dir, tmp_path / "bad", vq=out / "vq")
    # Copies of frozen weights in the checkpoint are what upstream runs (strict=False load over base and VQ): they
    # must equal ours, in bf16
    assert any("1 llm.* and 1 pixel_encoder.* copies" in line for line in report.notes)
    for key in ("llm.model.norm.weight", "pixel_encoder.quantize.embedding.weight"):
        state = upstream_state_dict(model)
        state[key] = state[key] + 0.1
        torch.save(state, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=f"copies .{key.split('.')[0]}.*. that differ.*{key.split('.', 1)[1]}"):
            convert_upstream(tmp_path / "bad.pt", tiny_base_dir, tmp_path / "bad", vq=out / "vq")
    with pytest.raises(ValueError, match="star-7b sizes"):
        convert_upstream(tmp_path / "STAR-tiny.pt", tiny_base_dir, tmp_path / "bad", vq=out / "vq", preset="star-7b")

    # The CLI entry point runs the same converter (transformers >= 4.52 key layout this time).
    state = {k.replace("stacked_ar.model.", "stacked_ar.model.language_model."): v
             for k, v in upstream_state_dict(model).items()}
    torch.save({"state_dict": state}, tmp_path / "STAR-new-layout.pt")
    assert cli_main(["convert-upstream", "--checkpoint", str(tmp_path / "STAR-new-layout.pt"), "--vq", str(out / "vq"),
                     "--base", str(tiny_base_dir), "--out", str(tmp_path / "cli")]) == 0
    assert torch.equal(logits_of(STAR.from_pretrained(tmp_path / "cli")), logits_of(model))


def test_convert_upstream_cli_refuses_unreadable_checkpoints_and_a_missing_base(tiny_base_dir, tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    common = ["--vq", str(tmp_path / "VQ-Model.pt"), "--out", str(tmp_path / "out")]
    for name in ("empty.pt", "text.pt"):
        assert cli_main(["convert-upstream", "--checkpoint", str(tmp_path / name), "--base", str(tiny_base_dir),
                         *common]) == 2
        assert f"cannot load {tmp_path / name}: not a readable PyTorch weights file" in capsys.readouterr().err
    assert cli_main(["convert-upstream", "--checkpoint", str(tmp_path / "empty.pt"), "--base",
                     str(tmp_path / "no-base"), *common]) == 2
    assert "no-base is not a model folder (no config.json)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, base_layers, stack, adapter, head", [
    ("star-3b", 36, 1.23e9, 5.2e6, 134e6),     # digest: stack ≈1.23 B, adapter ≈5.2 M, head ≈134 M
    ("star-7b", 28, 3.26e9, 40.4e6, 235e6),    # digest: stack ≈3.26 B, adapter ≈40.4 M, head ≈235 M
])
def test_presets_instantiate_on_meta_with_digest_sizes(name, base_layers, stack, adapter, head):
    from transformers import Qwen2_5_VLConfig

    from star.base import FrozenBase
    from star.config import BASE_ARCHITECTURES, PRESET_BASES, PRESET_VQ, preset
    from star.vq import VQModel
    from star.vq import preset as vq_preset

    config = preset(name)
    with torch.device("meta"):
        base = FrozenBase.from_config(Qwen2_5_VLConfig(**BASE_ARCHITECTURES[PRESET_BASES[name]]))
        model = STAR(config, base, VQModel(vq_preset(PRESET_VQ[name])))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert base.num_layers == base_layers and len(model.stacks[0].decoder.layers) == config.stacks[0].num_layers
    for part, expected in ((model.stacks, stack), (model.adapter, adapter), (model.head, head)):
        assert abs(count(part) - expected) / expected < 0.01, f"{name}: {count(part):,} vs digest {expected:,.0f}"
    assert abs(count(model.vq) - 1.06e9) / 1.06e9 < 0.01, "STAR-VQ ≈1.06 B"
