"""`star train vq` and the image readers: exact resume, dead-code restarts, optional losses, torchrun (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from star.image_data import ImageFileDataset, open_image_dataset, pil_to_tensor
from star.vq import VQConfig, VQModel
from star.vq_train import (VGG16_LAYOUT, Dist, PatchDiscriminator, PerceptualLoss, VQTrainConfig,
                           restart_dead_codes, train)

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, attn_heads=2, z_channels=16, codebook_size=32,
            code_dim=8, resolution=16)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def image_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(12):
        sub = tmp_path / "imgs" / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    return tmp_path / "imgs"


@pytest.fixture
def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(VQConfig(**TINY).to_dict()))
    return str(path)


def run_cfg(out: Path, data: Path, model_config: str, **kw) -> VQTrainConfig:
    base = dict(out=str(out), data=str(data), model_config=model_config, batch_size=4, lr=1e-3, warmup=1,
                log_every=1, sample_every=2, save_every=2, restart_every=2, progress=False, threads=1)
    return VQTrainConfig(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "model" / "model.safetensors"))


# -----------------------------------------------------------------------------
# Image readers


def test_image_readers(image_dir, tmp_path):
    ds = open_image_dataset(str(image_dir), 16)
    assert len(ds) == 12 and ds[0].shape == (3, 16, 16) and -1 <= ds[0].min() and ds[0].max() <= 1
    (tmp_path / "list.txt").write_text("imgs/a/1.png\nimgs/b/c/0.png\n")
    assert len(open_image_dataset(str(tmp_path / "list.txt"), 16)) == 2
    from star.data.records import RecordWriter
    with Image.open(image_dir / "a" / "1.png") as im, Image.open(image_dir / "a" / "3.png") as im2:
        with RecordWriter(tmp_path / "records") as w:
            w.add({"kind": "t2i", "image": im.copy(), "text": "noise"})
            w.add({"kind": "edit", "source": im.copy(), "target": im2.copy(), "text": "x", "edit_type": "alter"})
        records = open_image_dataset(str(tmp_path / "records"), 16)
        assert len(records) == 2, "distinct images of all record kinds"
        assert torch.equal(records[0], pil_to_tensor(im, 16)) and torch.equal(records[1], pil_to_tensor(im2, 16))
    centre = pil_to_tensor(Image.new("RGB", (40, 20), (255, 0, 0)), 16, crop="center")
    assert centre.shape == (3, 16, 16) and torch.allclose(centre[0], torch.ones(16, 16))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="broken.png"):
        ImageFileDataset.from_folder(tmp_path / "bad", 16)[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFileDataset.from_folder(tmp_path / "empty", 16)
    with pytest.raises(FileNotFoundError):
        open_image_dataset(str(tmp_path / "nope"), 16)


# -----------------------------------------------------------------------------
# Training loop


def test_train_writes_run_folder_and_resumes_exactly(image_dir, tiny_config, tmp_path):
    straight = tmp_path / "straight"
    metrics = train(run_cfg(straight, image_dir, tiny_config, steps=4))
    assert metrics["step"] == 4 and np.isfinite(metrics["l1"])
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [1, 2, 3, 4]
    assert {"psnr", "usage", "perplexity", "codebook", "commit", "lr"} <= set(log[0])
    assert sorted(p.name for p in (straight / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert Image.open(straight / "samples" / "step_0000004.png").size == (16 * 8, 32)
    model = VQModel.from_pretrained(straight / "model")
    assert model.config == VQConfig(**TINY)

    crops = dict(crop_size=8, crops_per_image=2)                               # grid-aligned random crops
    train(run_cfg(tmp_path / "crops", image_dir, tiny_config, steps=4, **crops))
    split = tmp_path / "split"
    train(run_cfg(split, image_dir, tiny_config, steps=4, time_limit=1e-9, **crops))   # stops (and saves) at step 1
    assert torch.load(split / "checkpoint.pt", weights_only=False)["step"] == 1
    train(run_cfg(split, image_dir, tiny_config, steps=4, resume=True, **crops))
    a, b = weights(tmp_path / "crops"), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run must end bit-identical to an uninterrupted one"
    # a killed run's log lines past its checkpoint are dropped on resume (not doubled); a fresh run never
    # overwrites a folder holding a checkpoint
    assert [m["step"] for m in map(json.loads, (split / "log.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    ckpt = torch.load(split / "checkpoint.pt", weights_only=False)
    torch.save({**ckpt, "step": 2}, split / "checkpoint.pt")                  # as if killed after logging step 4
    train(run_cfg(split, image_dir, tiny_config, steps=4, resume=True, **crops))
    assert [m["step"] for m in map(json.loads, (split / "log.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        train(run_cfg(split, image_dir, tiny_config, steps=4, **crops))


def test_autoencoder_warmup_then_kmeans_codebook_and_exact_resume(image_dir, tiny_config, tmp_path):
    warm = dict(steps=4, ae_warmup=2, kmeans_images=6, kmeans_iters=3)
    straight = tmp_path / "straight"
    train(run_cfg(straight, image_dir, tiny_config, **warm))
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert all(m["restarted"] == 0 for m in log[:2]), "no dead-code restarts while the codebook is idle"
    codebook = weights(straight)["quantize.embedding.weight"]
    init = VQModel(VQConfig(**TINY)).quantize.embedding.weight.detach()
    assert codebook.abs().max() > 10 * init.abs().max(), "codes moved from the tiny uniform init to latent centroids"

    split = tmp_path / "split"
    train(run_cfg(split, image_dir, tiny_config, time_limit=1e-9, **warm))       # stops inside the warm-up
    train(run_cfg(split, image_dir, tiny_config, resume=True, **warm))
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a), "the k-means step is part of the resumable schedule"


def test_freeze_trains_a_new_decoder_for_an_existing_code_space(image_dir, tiny_config, tmp_path):
    first = tmp_path / "first"
    train(run_cfg(first, image_dir, tiny_config, steps=2, restart_every=0))
    second = tmp_path / "second"
    train(run_cfg(second, image_dir, None, steps=3, restart_every=0, init=str(first / "model"),
                  freeze=("encoder", "quant_conv", "quantize"), overrides={"local_decoder": True}))
    a, b = weights(first), weights(second)
    kept = [k for k in a if k.startswith(("encoder", "quant_conv", "quantize"))]
    assert kept and all(torch.equal(a[k], b[k]) for k in kept), "the code space is untouched"
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder")), "the decoder trained"
    assert json.loads((second / "model" / "config.json").read_text())["local_decoder"] is True
    with pytest.raises(ValueError, match="cannot be re-seeded"):
        train(run_cfg(tmp_path / "bad", image_dir, None, steps=1, restart_every=2, init=str(first / "model"),
                      freeze=("quantize",)))
    with pytest.raises(ValueError, match="matches no parameter"):
        train(run_cfg(tmp_path / "bad2", image_dir, None, steps=1, init=str(first / "model"), freeze=("decodr",)))


def test_pixel_dictionary_gives_every_repeated_tile_its_own_code():
    """Exact tiles (ShapeWorld) must not share codes with look-alikes: tiles seen more than once seed the k-means,
    so with more codes than repeated tiles each of them is its own code, however rare next to the background."""
    from star.vq_train import patch_codes, pixel_dictionary

    gen = torch.Generator().manual_seed(0)
    background = torch.zeros(3, 8, 8)
    tiles = [background + 0.05 * torch.randn(3, 8, 8, generator=gen) + 0.02 * i for i in range(6)]  # look-alikes
    noise = [torch.randn(3, 8, 8, generator=gen) for _ in range(40)]                              # seen once
    images = []
    for i in range(40):
        cells = [background, background, tiles[i % 6], noise[i]]
        images.append(torch.cat([torch.cat(cells[:2], 2), torch.cat(cells[2:], 2)], 1))           # (3, 16, 16)
    vq_cfg = VQConfig(ch=16, ch_mult=(1,), patch_size=8, num_res_blocks=1, norm_groups=8, attn_heads=2,
                      z_channels=16, codebook_size=12, code_dim=4, resolution=16)
    dictionary = pixel_dictionary(images, vq_cfg, images=40, iters=10, seed=0)
    codes = patch_codes(torch.stack([torch.cat([torch.cat([background, t], 2)] * 2, 1) for t in tiles]),
                        dictionary, 8, 1 << 24)                                                   # (6, 2, 2)
    assert len(set(codes[:, 0, 1].tolist())) == 6, "six look-alike tiles, six codes"
    assert not set(codes[:, 0, 1].tolist()) & set(codes[:, 0, 0].tolist()), "none shares the background's code"


def test_dictionary_warmup_teaches_the_pixel_kmeans_codes_then_resumes_exactly(tmp_path):
    from star.image_data import ShapeWorldDataset
    from star.vq_train import patch_codes, pixel_dictionary, principal_coordinates

    cfg = dict(ch=16, ch_mult=(1,), patch_size=8, num_res_blocks=1, norm_groups=8, attn_heads=2, z_channels=16,
               codebook_size=16, code_dim=4, resolution=32)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(VQConfig(**cfg).to_dict()))
    data = "shapeworld:64:0"
    run = dict(steps=30, batch_size=8, lr=1e-2, dict_warmup=30, kmeans_images=32, kmeans_iters=5, restart_every=0,
               log_every=10, sample_every=30, save_every=10)
    out = tmp_path / "dict"
    train(run_cfg(out, data, str(path), **run))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["target_acc"] > log[0]["target_acc"] and log[-1]["target_acc"] > 0.8, \
        "the encoder learns to choose the dictionary's codes"
    assert log[-1]["target_ce"] < log[0]["target_ce"]

    vq_cfg = VQConfig(**cfg)
    dataset = ShapeWorldDataset(size=64, resolution=32, seed=0)
    dictionary = pixel_dictionary(dataset, vq_cfg, images=32, iters=5, seed=0)
    assert dictionary.shape == (16, 3 * 8 * 8)
    images = torch.stack([dataset[i] for i in range(4)])
    codes = patch_codes(images, dictionary, 8, 1 << 24)
    cells = torch.nn.functional.pixel_unshuffle(images, 8).permute(0, 2, 3, 1)            # (4, 4, 4, 192)
    brute = torch.cdist(cells.reshape(-1, 192), dictionary).argmin(1).reshape(4, 4, 4)
    assert torch.equal(codes, brute), "each cell gets its nearest dictionary patch"
    coords = principal_coordinates(dictionary, 4)
    assert coords.shape == (16, 4) and torch.allclose(coords.std(0), torch.ones(4), atol=1e-4)

    split = tmp_path / "split"
    train(run_cfg(split, data, str(path), time_limit=1e-9, **run))                      # stops at step 1
    train(run_cfg(split, data, str(path), resume=True, **run))
    a, b = weights(out), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a), "the dictionary is rebuilt identically on resume"
    with pytest.raises(ValueError, match="alternatives"):
        run_cfg(out, data, str(path), ae_warmup=2, dict_warmup=2)


def test_resume_refuses_nan_checkpoint_and_other_config(image_dir, tiny_config, tmp_path):
    out = tmp_path / "run"
    train(run_cfg(out, image_dir, tiny_config, steps=2))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    ckpt["model"]["decoder.conv_out.bias"][0] = float("nan")
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="NaN"):
        train(run_cfg(out, image_dir, tiny_config, steps=4, resume=True))
    with pytest.raises(ValueError, match="different VQ config"):
        train(run_cfg(out, image_dir, tiny_config, steps=4, resume=True, overrides={"codebook_size": 16}))


def test_random_crops_stay_on_the_code_grid():
    from star.vq_train import random_aligned_crops
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    images = torch.stack([ys, xs, ys]).expand(32, 3, 64, 64)
    crops = random_aligned_crops(images, 32, 16, seed=0, step=3, rank=0)          # (32, 3, 32, 32)
    assert crops.shape == (32, 3, 32, 32)
    assert (crops[:, :2, 0, 0] % 16 == 0).all(), "crop offsets are multiples of the downsample factor"
    assert len({tuple(c[:2, 0, 0].tolist()) for c in crops}) > 1, "offsets vary across the batch"
    assert torch.equal(crops, random_aligned_crops(images, 32, 16, seed=0, step=3, rank=0)), "deterministic"


def test_dead_code_restart_reseeds_only_unused_codes():
    torch.manual_seed(0)
    model = VQModel(VQConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.quantize.embedding.weight.detach().clone()
    model.quantize.usage_counts[:20] = 5                              # codes 20..31 are dead
    latents = torch.randn(50, 8) * 3
    n, counts = restart_dead_codes(model, opt, latents, Dist(), torch.Generator().manual_seed(0))
    after = model.quantize.embedding.weight.detach()
    assert n == 12 and counts[:20].eq(5).all()
    assert torch.equal(after[:20], before[:20]), "live codes are untouched"
    dist_to_latents = torch.cdist(after[20:], latents).min(1).values
    assert (dist_to_latents < 0.2).all(), "dead codes are re-seeded next to encoder outputs"
    assert model.quantize.usage_counts.sum() == 0, "the usage window restarts"


def test_optional_losses_need_local_weights_and_run(image_dir, tiny_config, tmp_path):
    with pytest.raises(ValueError, match="perceptual-weights"):
        run_cfg(tmp_path / "p", image_dir, tiny_config, steps=1, perceptual_weight=1.0)
    # a synthetic torchvision-layout VGG16 state dict stands in for real weights (none are downloaded)
    state, c, i = {}, 3, 0
    for v in VGG16_LAYOUT:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.randn(v, c, 3, 3) * 0.05, torch.zeros(v)
        c, i = v, i + 2
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "vgg16.pth")
    loss = PerceptualLoss(str(tmp_path / "vgg16.pth"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0 and loss(x, -x).item() > 0
    del state["features.28.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="features.28.weight"):
        PerceptualLoss(str(tmp_path / "bad.pth"))
    assert PatchDiscriminator()(torch.zeros(2, 3, 32, 32)).shape[:2] == (2, 1)
    metrics = train(run_cfg(tmp_path / "adv", image_dir, tiny_config, steps=2, adv_weight=0.1, resolution=32,
                            perceptual_weight=0.5, perceptual_weights=str(tmp_path / "vgg16.pth")))
    assert {"gen_adv", "disc", "perceptual"} <= set(metrics) and np.isfinite(metrics["disc"])


# -----------------------------------------------------------------------------
# torchrun, 2 processes, gloo


def torchrun_train(parallel: str, out: Path, image_dir: Path, tiny_config: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "star.cli", "train", "vq", "--out", str(out), "--data", str(image_dir), "--model-config", tiny_config,
           "--steps", "3", "--batch-size", "2", "--log-every", "1", "--save-every", "3", "--sample-every", "3",
           "--restart-every", "2", "--lr", "1e-3", "--warmup", "1", "--parallel", parallel, "--threads", "1",
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        raise
    assert proc.returncode == 0, output[-4000:]


def test_torchrun_two_processes_ddp_and_fsdp_agree(image_dir, tiny_config, tmp_path):
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        torchrun_train(parallel, out, image_dir, tiny_config)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [m["step"] for m in log] == [1, 2, 3], "rank 0 logs each step once"
        assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
        assert sum(m["restarted"] for m in log) > 0, "dead-code restarts ran across ranks"
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "fsdp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3, msg=lambda m: f"DDP vs FSDP2 differ at {k}: {m}")


def test_shapeworld_edit_fraction_draws_edit_targets_and_leaves_other_scenes_alone():
    """`shapeworld:N:SEED:V:C:E`: a fraction E of the images are ShapeImgEdit targets (outlines, objects on pure
    white), chosen by the same draw as before, so E = 0 is the old dataset image for image."""
    from star.image_data import ShapeWorldDataset, open_image_dataset

    plain = ShapeWorldDataset(size=400, resolution=32, seed=3, cache=False)
    mixed = open_image_dataset("shapeworld:400:3:0.2:all:0.5", 32)
    assert mixed.edits == 0.5 and mixed.varied == 0.2
    kinds = [mixed._edit_item(i) for i in range(400)]
    edited = [i for i, item in enumerate(kinds) if item is not None]
    assert 150 < len(edited) < 250, len(edited)
    assert {item.edit_type for item in kinds if item is not None} >= {"extract", "style"}
    for i in range(400):
        if i not in edited:
            assert plain.scene(i) == mixed.scene(i), "scenes outside the edit fraction are unchanged"
    extract = next(i for i in edited if kinds[i].edit_type == "extract")
    assert (mixed[extract][:, 0, 0] == 1.0).all(), "extract targets are drawn on pure white"
    style = next(i for i in edited if kinds[i].edit_type == "style")
    assert all(o.hollow for o in mixed.scene(style).objects)
    with pytest.raises(ValueError, match="edits must be in"):
        open_image_dataset("shapeworld:10:0:0.5:all:0.6", 32)
