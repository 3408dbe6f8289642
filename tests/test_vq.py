"""VQ tokenizer: quantizer exactness, gradients, API shapes, persistence, upstream key compatibility, bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from star.vq import (AttnBlock, LoadReport, VQConfig, VQModel, check_state_dict, count_parameters, entropy_loss,
                     code_cross_entropy, kmeans_codebook, load_upstream_vq, nearest_codes, preset)

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, attn_heads=2, z_channels=16, codebook_size=64,
            code_dim=8, resolution=16)


@pytest.fixture
def tiny_vq() -> VQModel:
    torch.manual_seed(0)
    model = VQModel(VQConfig(**TINY))
    with torch.no_grad():  # spread the codebook so that many codes are in use
        model.quantize.embedding.weight.normal_()
    return model.eval()


def images(b: int = 2, side: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1


# -----------------------------------------------------------------------------
# Quantizer


@pytest.mark.parametrize("l2_norm", [False, True])
@pytest.mark.parametrize("block,code_chunk", [(1 << 24, 8192), (300 * 7, 300), (97, 8192)])
def test_nearest_codes_equals_brute_force(l2_norm: bool, block: int, code_chunk: int):
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(257, 12, generator=g), torch.randn(1000, 12, generator=g)
    codes, dist = nearest_codes(z, codebook, l2_norm=l2_norm, block=block, code_chunk=code_chunk)
    zr, er = z.double(), codebook.double()
    if l2_norm:
        zr, er = F.normalize(zr, dim=-1), F.normalize(er, dim=-1)
    full = torch.cdist(zr, er) ** 2                                     # (N, K) brute force in float64
    assert torch.equal(codes, full.argmin(1)), "chunked search must pick exactly the brute-force nearest code"
    torch.testing.assert_close(dist.double(), full.min(1).values, atol=1e-3, rtol=1e-4)


def test_nearest_codes_half_precision_input_uses_fp32():
    g = torch.Generator().manual_seed(3)
    z, codebook = torch.randn(64, 16, generator=g), torch.randn(512, 16, generator=g)
    codes32, _ = nearest_codes(z, codebook)
    codes_bf16, _ = nearest_codes(z.bfloat16().float(), codebook.bfloat16())   # bf16 storage, fp32 arithmetic
    ref = torch.cdist(z.bfloat16().double(), codebook.bfloat16().double()).argmin(1)
    assert torch.equal(codes_bf16, ref) and codes32.dtype == torch.long


def test_straight_through_gradient_and_loss_targets(tiny_vq):
    q = tiny_vq.quantize.train()
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = q(z)
    weight = torch.randn_like(out.z_q)
    (out.z_q * weight).sum().backward()
    assert torch.equal(z.grad, weight), "straight-through: d z_q / d z must be the identity"
    assert q.embedding.weight.grad is None, "the reconstruction path must not move the codebook"
    z.grad = None
    out = q(z)
    out.codebook_loss.backward()
    assert z.grad is None or torch.count_nonzero(z.grad) == 0, "codebook loss must not move the encoder"
    used = torch.zeros(64, dtype=torch.bool)
    used[out.codes.flatten()] = True
    grad_rows = q.embedding.weight.grad.abs().sum(1) > 0
    assert torch.equal(grad_rows, used), "codebook loss moves exactly the selected codes"
    z.grad = None
    q.embedding.weight.grad = None
    out = q(z)
    out.commit_loss.backward()
    assert q.embedding.weight.grad is None and z.grad.abs().sum() > 0, "commitment loss moves only the encoder"
    e = q.embedding.weight[out.codes].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.codebook_loss, F.mse_loss(e, z.detach()))
    torch.testing.assert_close(out.commit_loss, 0.25 * F.mse_loss(z, e.detach()))
    assert q.usage_counts.sum() == 3 * 2 * 9, "usage counts every quantized position in training mode"


@pytest.mark.parametrize("l2_norm", [False, True])
def test_kmeans_codebook_finds_well_separated_clusters(l2_norm: bool):
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 4, generator=gen) * 10
    points = centres.repeat_interleave(50, 0) + 0.05 * torch.randn(300, 4, generator=gen)   # 6 tight clusters
    found = kmeans_codebook(points, 6, 10, l2_norm=l2_norm, generator=torch.Generator().manual_seed(1), block=97)
    truth = F.normalize(centres, dim=-1) if l2_norm else centres
    assert found.shape == (6, 4) and found.dtype == torch.float32
    assert torch.cdist(truth, found).min(1).values.max() < 0.1, "every true centre is found"
    again = kmeans_codebook(points, 6, 10, l2_norm=l2_norm, generator=torch.Generator().manual_seed(1), block=97)
    assert torch.equal(found, again), "deterministic for a given generator"
    more = kmeans_codebook(points, 12, 10, generator=torch.Generator().manual_seed(1))      # k > clusters: no NaN
    assert torch.isfinite(more).all()
    with pytest.raises(ValueError, match="at least k=400"):
        kmeans_codebook(points, 400)


def test_bypass_decodes_the_unquantized_latents(tiny_vq):
    x = images()
    z = tiny_vq.encode_latents(x)
    out = tiny_vq(x, bypass=True)
    assert torch.allclose(out.recon, tiny_vq.decode_latents(z), atol=1e-5)
    assert not torch.allclose(out.recon, tiny_vq(x).recon, atol=1e-3), "the quantized pass differs"
    assert torch.equal(out.codes, tiny_vq.encode(x)), "codes are still reported"


def test_target_codes_mode_decodes_the_given_codes_with_a_chunked_cross_entropy(tiny_vq):
    gen = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(50, 8, generator=gen, requires_grad=True), torch.randn(64, 8, generator=gen)
    targets = torch.randint(0, 64, (50,), generator=gen)
    direct = F.cross_entropy(-torch.cdist(z, codebook).pow(2), targets)
    chunked = code_cross_entropy(z, codebook, targets, block=64 * 7)                 # 7 tokens a chunk
    assert torch.allclose(chunked, direct, atol=1e-5)
    (g_chunked,) = torch.autograd.grad(chunked, z)
    (g_direct,) = torch.autograd.grad(direct, z)
    assert torch.allclose(g_chunked, g_direct, atol=1e-6)

    x = images()
    codes = tiny_vq.encode(x)
    given = (codes + 1) % tiny_vq.config.codebook_size
    out = tiny_vq(x, targets=given)
    assert torch.allclose(out.recon, tiny_vq.decode(given), atol=1e-5), "the decoder draws the given codes"
    assert torch.equal(out.codes, codes), "the nearest codes are still reported"
    assert out.target_ce > tiny_vq(x, targets=codes).target_ce, "choosing the nearest codes costs less"
    with pytest.raises(ValueError, match="targets must be"):
        tiny_vq(x, targets=given[:, :1])


def test_patch_stem_folds_pixels_into_channels():
    cfg = VQConfig(**{**TINY, "patch_size": 4, "resolution": 32})
    assert cfg.downsample == 8 and cfg.tokens_per_image == 16
    model = VQModel(cfg).eval()
    assert model.encoder.conv_in.in_channels == 3 * 16 and model.decoder.conv_out.out_channels == 3 * 16
    x = images(2, 32)
    assert model.encode(x).shape == (2, 4, 4) and model(x).recon.shape == x.shape
    with pytest.raises(ValueError, match="patch_size"):
        VQConfig(**{**TINY, "patch_size": 3, "resolution": 16})


def test_local_encoder_codes_each_cell_from_its_own_pixels_only():
    cfg = VQConfig(**{**TINY, "patch_size": 4, "resolution": 32, "local_encoder": True})
    model = VQModel(cfg).eval()
    x = images(2, 32)                                                  # 4 x 4 cells of 8 px
    z = model.encode_latents(x)
    assert z.shape == (2, cfg.code_dim, 4, 4)
    y = x.clone()
    y[:, :, 8:16, 16:24] = -x[:, :, 8:16, 16:24]                       # change one cell, cell (1, 2)
    changed = (model.encode_latents(y) - z).abs().amax(dim=(0, 1)) > 1e-6
    assert changed[1, 2] and int(changed.sum()) == 1, "only the changed cell's latent moves"
    # the same cell pasted anywhere, in any image, gets the same code
    tile = x[0, :, 0:8, 0:8]
    canvas = images(1, 32)
    canvas[0, :, 24:32, 8:16] = tile
    assert model.encode(canvas)[0, 3, 1] == model.encode(x)[0, 0, 0]
    contextual = VQModel(VQConfig(**{**TINY, "patch_size": 4, "resolution": 32})).eval()
    moved = (contextual.encode_latents(y) - contextual.encode_latents(x)).abs().amax(dim=(0, 1)) > 1e-6
    assert int(moved.sum()) > 1, "the default (upstream) encoder sees its neighbours"


def test_local_decoder_draws_each_cell_from_its_own_code_only():
    cfg = VQConfig(**{**TINY, "patch_size": 4, "resolution": 32, "local_decoder": True})
    model = VQModel(cfg).eval()
    codes = torch.randint(0, cfg.codebook_size, (1, 4, 4))
    other = codes.clone()
    other[0, 2, 1] = (codes[0, 2, 1] + 1) % cfg.codebook_size
    with torch.no_grad():
        moved = (model.decode(other) - model.decode(codes)).abs().amax(dim=(0, 1)) > 1e-6   # (32, 32)
    cells = moved.reshape(4, 8, 4, 8).any(dim=(1, 3))
    assert cells[2, 1] and int(cells.sum()) == 1, "only the changed code's cell is redrawn"
    with torch.no_grad():                                              # a code draws the same tile anywhere
        tiles = model.decode(torch.full((1, 4, 4), 3)).reshape(3, 4, 8, 4, 8)
    assert torch.allclose(tiles[:, 0, :, 0], tiles[:, 3, :, 2], atol=1e-6)


def test_kmeans_weights_count_points_and_seeds_are_kept():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    one = kmeans_codebook(points, 1, 5, weights=torch.tensor([3.0, 1.0, 1.0, 1.0]))
    assert torch.allclose(one, torch.tensor([[(0 + 1 + 10 + 11 + 0 + 0) / 6, 0.0]]))    # weighted mean
    seeded = kmeans_codebook(points, 3, 5, seeds=2)                     # seeds stay; the third centre moves
    assert torch.equal(seeded[:2], points[:2]) and torch.allclose(seeded[2], torch.tensor([10.5, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        kmeans_codebook(points, 2, weights=torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_entropy_loss_chunked_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 8, generator=g, requires_grad=True)
    codebook = torch.randn(64, 8, generator=g)
    chunked = entropy_loss(z, codebook, temperature=0.5, block=64 * 7)   # 7 tokens per chunk
    (g1,) = torch.autograd.grad(chunked, z)
    d = torch.cdist(z, codebook) ** 2
    probs = F.softmax(-d / 0.5, -1)
    avg = probs.mean(0)
    direct = -(probs * F.log_softmax(-d / 0.5, -1)).sum(-1).mean() + (avg * torch.log(avg + 1e-5)).sum()
    (g2,) = torch.autograd.grad(direct, z)
    torch.testing.assert_close(chunked, direct, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_l2_normalised_codebook_embeds_unit_rows():
    model = VQModel(VQConfig(**{**TINY, "codebook_l2_norm": True})).eval()
    codes = model.encode(images())
    vectors = model.embed(codes)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(codes.shape))


# -----------------------------------------------------------------------------
# API


def test_encode_decode_embed_shapes(tiny_vq):
    x = images(3)
    codes = tiny_vq.encode(x)                                            # (3, 8, 8)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 64
    assert tiny_vq.decode(codes).shape == (3, 3, 16, 16)
    assert torch.equal(tiny_vq.decode(codes.flatten(1)), tiny_vq.decode(codes)), "flat square codes decode the same"
    assert torch.equal(tiny_vq.embed(codes), tiny_vq.quantize.embedding.weight[codes])
    assert tiny_vq.embed(codes.flatten(1)).shape == (3, 64, 8)
    out = tiny_vq(x)
    assert torch.equal(out.codes, codes), "forward and encode agree on the codes"
    torch.testing.assert_close(out.recon, tiny_vq.decode(codes))
    assert tiny_vq.encode(images(1, 32)).shape == (1, 16, 16), "any size divisible by the downsample factor"


def test_attention_matches_reference_multi_head_math():
    torch.manual_seed(0)
    block = AttnBlock(32, groups=8, heads=4)
    x = torch.randn(2, 32, 3, 5)
    n = block.norm(x)
    q, k, v = (m(n).reshape(2, 4, 8, 15) for m in (block.q, block.k, block.v))   # (b, head, c/head, hw)
    w = torch.softmax(q.transpose(2, 3) @ k * 8 ** -0.5, dim=-1)                    # (b, head, hw_q, hw_k)
    ref = x + block.proj_out((v @ w.transpose(2, 3)).reshape(2, 32, 3, 5))
    torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(tiny_vq, tmp_path):
    tiny_vq.save_pretrained(tmp_path / "vq")
    loaded = VQModel.from_pretrained(tmp_path / "vq")
    assert loaded.config == tiny_vq.config
    x = images()
    assert torch.equal(loaded.encode(x), tiny_vq.encode(x))
    torch.testing.assert_close(loaded.decode(tiny_vq.encode(x)), tiny_vq.decode(tiny_vq.encode(x)))
    assert json.loads((tmp_path / "vq" / "config.json").read_text())["ch_mult"] == [1, 2]


# -----------------------------------------------------------------------------
# Upstream compatibility: key names and shapes written out from upstream's construction rules, independently of
# star.vq (LlamaGen VQModel + multi-head attention, as used by STAR's VQ_Model).


def upstream_shapes(ch, ch_mult, z, K, d, nrb=2, in_ch=3, out_ch=3) -> dict[str, tuple[int, ...]]:
    sd: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = (c,), (c,)

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    levels = len(ch_mult)
    conv("encoder.conv_in", in_ch, ch, 3)
    in_mult = (1,) + tuple(ch_mult)
    for i in range(levels):
        bi, bo = ch * in_mult[i], ch * ch_mult[i]
        for j in range(nrb):
            res(f"encoder.conv_blocks.{i}.res.{j}", bi, bo)
            bi = bo
            if i == levels - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", bi)
        if i != levels - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", bi, bi, 3)
    res("encoder.mid.0", bi, bi), attn("encoder.mid.1", bi), res("encoder.mid.2", bi, bi)
    norm("encoder.norm_out", bi), conv("encoder.conv_out", bi, z, 3)
    bi = ch * ch_mult[-1]
    conv("decoder.conv_in", z, bi, 3)
    res("decoder.mid.0", bi, bi), attn("decoder.mid.1", bi), res("decoder.mid.2", bi, bi)
    for n, i in enumerate(reversed(range(levels))):
        bo = ch * ch_mult[i]
        for j in range(nrb + 1):
            res(f"decoder.conv_blocks.{n}.res.{j}", bi, bo)
            bi = bo
            if i == levels - 1:
                attn(f"decoder.conv_blocks.{n}.attn.{j}", bi)
        if i != 0:
            conv(f"decoder.conv_blocks.{n}.upsample.conv", bi, bi, 3)
    norm("decoder.norm_out", bi), conv("decoder.conv_out", bi, out_ch, 3)
    sd["quantize.embedding.weight"] = (K, d)
    sd["quantize.codebook_used"] = (K + 1,) if K >= 65536 else (65536,)
    conv("quant_conv", z, d, 1), conv("post_quant_conv", d, z, 1)
    return sd


def synthetic_upstream(shapes: dict, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


def test_star_vq_preset_matches_upstream_names_shapes_and_size():
    cfg = preset("star-vq")
    assert (cfg.downsample, cfg.tokens_per_image, cfg.codebook_size, cfg.code_dim) == (16, 576, 65536, 512)
    with torch.device("meta"):
        model = VQModel(cfg)
    n = count_parameters(model)
    assert abs(n - 1.06e9) / 1.06e9 < 0.01, f"star-vq should have ~1.06 B parameters, has {n:,}"
    shapes = upstream_shapes(256, (1, 2, 2, 4, 8), 512, 65536, 512)
    state = synthetic_upstream(shapes, device="meta")
    report = LoadReport(source="synthetic")
    from star.vq import convert_upstream_state_dict
    converted = convert_upstream_state_dict(state, report)
    assert [i.split()[0] for i in report.ignored] == ["quantize.codebook_used"]
    checked = check_state_dict(model, converted)
    assert checked.ok, str(checked)
    model.load_state_dict(converted, strict=True, assign=True)            # strict, at full size, on meta


def test_load_upstream_checkpoint_strictly_with_report(tmp_path):
    cfg = VQConfig(**{**TINY, "norm_groups": 8, "num_res_blocks": 2, "decoder_res_blocks": None})
    state = synthetic_upstream(upstream_shapes(16, (1, 2), 16, 64, 8))
    torch.save(state, tmp_path / "VQ-Model.pt")
    model, report = load_upstream_vq(tmp_path / "VQ-Model.pt", config=cfg)
    assert report.ok and report.loaded == len(state) - 1, str(report)
    assert "quantize.codebook_used" in report.ignored[0] and "ignored" in str(report)
    assert torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])
    assert torch.equal(model.decoder.conv_blocks[0].attn[2].proj_out.weight,
                       state["decoder.conv_blocks.0.attn.2.proj_out.weight"])
    # a full-model STAR checkpoint prefix and a {"model": ...} wrapper are unwrapped, and say so
    torch.save({"model": {f"pixel_encoder.{k}": v for k, v in state.items()}, "step": 3}, tmp_path / "wrapped.pt")
    _, report = load_upstream_vq(tmp_path / "wrapped.pt", config=cfg)
    assert report.ok and len(report.notes) == 2, str(report)


def test_upstream_mismatch_is_reported_never_silent(tmp_path):
    cfg = VQConfig(**{**TINY, "num_res_blocks": 2})
    state = synthetic_upstream(upstream_shapes(16, (1, 2), 16, 64, 8))
    del state["encoder.conv_in.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    state["quant_conv.weight"] = torch.zeros(8, 16, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(KeyError) as err:
        load_upstream_vq(tmp_path / "bad.pt", config=cfg)
    msg = str(err.value)
    assert "encoder.conv_in.bias" in msg and "decoder.extra.weight" in msg and "quant_conv.weight" in msg
    model, report = load_upstream_vq(tmp_path / "bad.pt", config=cfg, strict=False)
    assert report.missing == ["encoder.conv_in.bias"] and report.unexpected == ["decoder.extra.weight"]
    assert len(report.mismatched) == 1 and torch.isfinite(model.quant_conv.weight).all()


# -----------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_clear_errors(tiny_vq, tmp_path):
    with pytest.raises(ValueError, match="3-channel"):
        tiny_vq.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="not divisible"):
        tiny_vq.encode(torch.zeros(1, 3, 17, 16))
    with pytest.raises(ValueError, match="float images"):
        tiny_vq.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tiny_vq.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(ValueError, match=r"got range \[-1, 3\]"):
        tiny_vq.embed(torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="not a square"):
        tiny_vq.decode(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(ch=24, norm_groups=32)
    with pytest.raises(ValueError, match="resolution"):
        VQConfig(**{**TINY, "resolution": 17})
    with pytest.raises(KeyError, match="unknown VQConfig fields"):
        VQConfig.from_dict({"codebok_size": 3})
    tiny_vq.save_pretrained(tmp_path / "nan")
    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "nan" / "model.safetensors")
    state["decoder.conv_out.weight"][0, 0, 0, 0] = math.nan
    save_file(state, tmp_path / "nan" / "model.safetensors")
    with pytest.raises(ValueError, match="NaN"):
        VQModel.from_pretrained(tmp_path / "nan")
    with pytest.raises(FileNotFoundError, match="config.json"):
        VQModel.from_pretrained(tmp_path / "missing")
