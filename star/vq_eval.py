"""`star eval vq`: reconstruction metrics of an image tokenizer (ShapeRecon on ShapeWorld, or any image folder).

    star eval vq --out runs/eval-vq                         # the shipped ShapeWorld tokenizer, held-out scenes
    star eval vq --model runs/vq/model --out DIR --n 1000   # a trained folder (or an upstream VQ-Model.pt)
    star eval vq --model ckpt/VQ-Model.pt --data /imagenet/val --resolution 256 --inception inception-2015-12-05.pt

Metrics (research/eval.md §6 and §10.6), all per image then averaged unless stated:
  psnr            10 log10(1 / MSE) on [0, 1] images, reconstruction quantised to uint8 first (LlamaGen's rule)
  ssim            skimage-compatible SSIM (7x7 uniform window, sample covariance), data_range = 1, channel mean
  ssim_llamagen   the same with data_range = 2 on [0, 1] images: LlamaGen's quirk, inflated; for comparison only
  usage           fraction of the codebook used at least once over the whole set
  perplexity      exp(entropy) of the code histogram over the whole set
  roundtrip       ShapeWorld only: fraction of scenes whose reconstruction parses back to the scene
                  (`star.shapes.parse.roundtrip_ok`); `roundtrip_oracle` is the same on the originals (the ceiling)
  geneval         ShapeWorld only: ShapeGenEval reference scenes per tag, originals vs reconstructions, and their ratio
  imgedit         ShapeWorld only: ShapeImgEdit of the ground-truth targets' reconstructions (the originals score
                  5.0), per edit type and overall: the best score any model drawing with this tokenizer can reach
  rfid            only with --inception PATH (a local TorchScript Inception, e.g. NVIDIA's inception-2015-12-05.pt);
                  otherwise null with a note. Never estimated with other features.
Outputs: OUT/summary.json and OUT/recon_grid.png (inputs over reconstructions).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg, ndimage
from torch import Tensor

from star.image_data import (SHAPEWORLD_EVAL_SEED, ShapeWorldDataset, open_image_dataset, pil_to_tensor,
                             shapeworld_kwargs, tensor_to_uint8)
from star.vq import VQModel, load_vq

# -----------------------------------------------------------------------------
# Image metrics (numpy, float64)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of two uint8 (H, W, C) images, data range 1 after /255 (inf when identical)."""
    a, b = reference.astype(np.float64) / 255.0, test.astype(np.float64) / 255.0
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0, win_size: int = 7) -> float:
    """SSIM of two uint8 (H, W, C) images scaled to [0, 1], as skimage's `structural_similarity(channel_axis=-1)`.

    Uniform win_size x win_size window, K1 = 0.01, K2 = 0.03, sample covariance, reflect padding, the border of
    (win_size - 1) / 2 pixels cropped before averaging, then the mean over channels. `data_range=2` reproduces
    LlamaGen's call on [0, 1] images.
    """
    if reference.shape != test.shape or reference.ndim != 3:
        raise ValueError(f"ssim expects two (H, W, C) images of the same shape, got {reference.shape} and {test.shape}")
    if min(reference.shape[:2]) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size} pixels, got {reference.shape[:2]}")
    x_all, y_all = reference.astype(np.float64) / 255.0, test.astype(np.float64) / 255.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = win_size ** 2
    cov_norm = n / (n - 1)
    pad = (win_size - 1) // 2
    values = []
    for ch in range(x_all.shape[2]):
        x, y = x_all[..., ch], y_all[..., ch]
        ux, uy = ndimage.uniform_filter(x, win_size), ndimage.uniform_filter(y, win_size)
        uxx, uyy, uxy = (ndimage.uniform_filter(v, win_size) for v in (x * x, y * y, x * y))
        vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        values.append(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())
    return float(np.mean(values))


def codebook_stats(counts: np.ndarray) -> tuple[float, float]:
    """(usage = fraction of codes used at least once, perplexity = exp(H) of the histogram) of code counts (K,)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float((counts > 0).mean()), float(np.exp(-(p * np.log(p)).sum()))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), with the usual eps fallback for singular products."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class InceptionFeatures:
    """2048-d pool features from a local TorchScript Inception (NVIDIA's `inception-2015-12-05.pt`, as used by
    StyleGAN's metrics and clean-fid): called on uint8-range float (B, 3, H, W) with return_features=True."""

    def __init__(self, path: str, device: torch.device):
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights {p} not found; rFID needs a local TorchScript file "
                                    f"(inception-2015-12-05.pt). Nothing is downloaded.")
        try:
            with warnings.catch_warnings():  # TorchScript is how these Inception ports ship; its loader is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(p), map_location=device).eval()
        except RuntimeError as exc:
            raise ValueError(f"{p} is not a TorchScript Inception module: {exc}") from exc
        self.device = device

    @torch.no_grad()
    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, 2048)
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).to(self.device)
        feats = self.net(x, return_features=True)
        if feats.ndim != 2:
            raise ValueError(f"Inception module returned features of shape {tuple(feats.shape)}, expected (B, D)")
        return feats.double().cpu().numpy()


def _stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


# -----------------------------------------------------------------------------
# ShapeWorld round trips


def _roundtrip_fn():
    try:
        from star.shapes.parse import roundtrip_ok
    except ImportError as exc:
        raise ImportError("star.shapes.parse.roundtrip_ok is not available in this checkout; ShapeWorld round-trip "
                          "metrics need it") from exc
    return roundtrip_ok


@torch.no_grad()
def reconstruct(model: VQModel, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """(N, 3, H, W) -> (reconstructions clamped to [-1, 1] (N, 3, H, W), codes (N, h, w)), in batches."""
    device = next(model.parameters()).device
    recons, codes = [], []
    for i in range(0, images.shape[0], batch_size):
        c = model.encode(images[i:i + batch_size].to(device))
        recons.append(model.decode(c).clamp(-1, 1).float().cpu())
        codes.append(c.cpu())
    return torch.cat(recons), torch.cat(codes)


def _to_pil(array: np.ndarray):
    from PIL import Image
    return Image.fromarray(array)


def geneval_roundtrip(model: VQModel, batch_size: int, per_tag: int | None = None, images_per_prompt: int = 4,
                      seed: int = 0) -> dict[str, Any]:
    """ShapeGenEval reference scenes: score the originals (the ceiling) and their VQ reconstructions, per tag.

    Uses star.shapes.geneval's prompt set and scorer: a reconstruction keeps a scene when it scores as the original.
    """
    from star.shapes import geneval as sg
    from star.shapes.render import render
    from star.shapes.sample import geneval_reference_scene

    metadatas = sg.prompt_metadata()
    rng = np.random.default_rng(seed)
    by_tag: dict[str, list[dict]] = {}
    for meta in metadatas:
        by_tag.setdefault(meta["tag"], []).append(meta)
    result: dict[str, Any] = {}
    for tag, metas in sorted(by_tag.items()):
        metas = [m for m in (metas[:per_tag] if per_tag else metas) for _ in range(images_per_prompt)]
        scenes = [geneval_reference_scene(m, rng, split="eval") for m in metas]
        originals = torch.stack([pil_to_tensor(render(s, model.config.resolution)) for s in scenes])
        recons, _ = reconstruct(model, originals, batch_size)
        orig_u8, rec_u8 = tensor_to_uint8(originals), tensor_to_uint8(recons)
        ok_orig = [bool(sg.evaluate_image(_to_pil(o), m)["correct"]) for o, m in zip(orig_u8, metas)]
        ok_rec = [bool(sg.evaluate_image(_to_pil(r), m)["correct"]) for r, m in zip(rec_u8, metas)]
        oracle, recon = float(np.mean(ok_orig)), float(np.mean(ok_rec))
        result[tag] = {"images": len(metas), "oracle": oracle, "recon": recon,
                       "ratio": recon / oracle if oracle > 0 else float("nan")}
    return result


def imgedit_roundtrip(model: VQModel, batch_size: int, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """ShapeImgEdit's items (`star.shapes.edits.imgedit_items(n, seed)`, the benchmark's set by default): the
    ground-truth targets through the tokenizer, scored as edits. Ground truth scores 5.0 on every type, so this is
    the tokenizer's ceiling on the benchmark: {"overall", "tasks": {type: score}, "items"}."""
    from star.shapes import edits, imgedit

    items = edits.imgedit_items(n, seed)
    targets = torch.stack([pil_to_tensor(edits.render_target(it, model.config.resolution)) for it in items])
    recons, _ = reconstruct(model, targets, batch_size)
    results = [imgedit.score_item(it, _to_pil(r)) for it, r in zip(items, tensor_to_uint8(recons))]
    summary = imgedit.summarize(results)
    return {"overall": summary["overall"], "tasks": summary["types"], "items": len(items)}


# -----------------------------------------------------------------------------
# The evaluation


def evaluate(model: VQModel, data: str = "shapeworld", n: int = 500, batch_size: int = 32,
             resolution: int | None = None, inception: str | None = None, geneval: bool = True,
             geneval_per_tag: int | None = None, images_per_prompt: int = 4, imgedit_items: int = 200,
             out: Path | None = None) -> dict[str, Any]:
    """Compute the summary dict (see the module docstring); writes summary.json and recon_grid.png when `out`."""
    t0 = time.time()
    cfg = model.config
    resolution = resolution or cfg.resolution
    is_shapeworld = data == "shapeworld" or data.startswith("shapeworld:")
    if is_shapeworld:  # held-out scenes: the evaluation seed unless the spec names one
        dataset = ShapeWorldDataset(resolution=resolution, **shapeworld_kwargs(data, size=n, seed=SHAPEWORLD_EVAL_SEED))
    else:
        dataset = open_image_dataset(data, resolution)
    n = min(n, len(dataset))
    counts = np.zeros(cfg.codebook_size, dtype=np.int64)
    psnrs, ssims, ssims2, rt_ok, rt_oracle = [], [], [], [], []
    feats_real, feats_fake = [], []
    roundtrip_ok = _roundtrip_fn() if is_shapeworld else None
    detector = InceptionFeatures(inception, next(model.parameters()).device) if inception else None
    grid = None
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        images = torch.stack([dataset[i] for i in idx])
        recons, codes = reconstruct(model, images, batch_size)
        counts += np.bincount(codes.flatten().numpy(), minlength=cfg.codebook_size)
        real, fake = tensor_to_uint8(images), tensor_to_uint8(recons)              # (B, H, W, 3) uint8
        if grid is None:
            grid = np.concatenate([np.concatenate(list(real[:8]), 1), np.concatenate(list(fake[:8]), 1)], 0)
        for r, f in zip(real, fake):
            psnrs.append(psnr(r, f))
            ssims.append(ssim(r, f, data_range=1.0))
            ssims2.append(ssim(r, f, data_range=2.0))
        if roundtrip_ok is not None:
            for i, r, f in zip(idx, real, fake):
                scene = dataset.scene(i)
                rt_oracle.append(bool(roundtrip_ok(scene, _to_pil(r))))
                rt_ok.append(bool(roundtrip_ok(scene, _to_pil(f))))
        if detector is not None:
            feats_real.append(detector(real))
            feats_fake.append(detector(fake))
    usage, perplexity = codebook_stats(counts)
    finite = [p for p in psnrs if math.isfinite(p)]
    summary: dict[str, Any] = {
        "data": data, "n": n, "resolution": resolution, "codes_per_image": (resolution // cfg.downsample) ** 2,
        "codebook_size": cfg.codebook_size, "code_dim": cfg.code_dim,
        "psnr": float(np.mean(finite)) if finite else float("inf"),
        "psnr_identical_images": len(psnrs) - len(finite),
        "ssim": float(np.mean(ssims)), "ssim_llamagen": float(np.mean(ssims2)),
        "ssim_conventions": "ssim: data_range=1 on [0,1]; ssim_llamagen: data_range=2 on [0,1] (LlamaGen quirk)",
        "usage": usage, "perplexity": perplexity,
        "roundtrip": float(np.mean(rt_ok)) if rt_ok else None,
        "roundtrip_oracle": float(np.mean(rt_oracle)) if rt_oracle else None,
    }
    if not is_shapeworld:
        summary["roundtrip_note"] = "roundtrip needs ShapeWorld scenes (--data shapeworld); not defined for files"
    if detector is not None:
        if n < 2:
            raise ValueError("rFID needs at least 2 images")
        summary["rfid"] = frechet_distance(*_stats(np.concatenate(feats_real)), *_stats(np.concatenate(feats_fake)))
    else:
        summary["rfid"] = None
        summary["rfid_note"] = ("rFID not computed: pass --inception PATH to a local TorchScript Inception "
                                "(inception-2015-12-05.pt); no other feature extractor is substituted")
    if is_shapeworld and geneval:
        try:
            summary["geneval"] = geneval_roundtrip(model, batch_size, geneval_per_tag, images_per_prompt)
            ratios = [v["ratio"] for v in summary["geneval"].values()]
            summary["geneval_min_ratio"] = float(min(ratios)) if ratios else None
        except ImportError as exc:
            summary["geneval"] = None
            summary["geneval_note"] = f"ShapeGenEval round trip unavailable: {exc}"
    if is_shapeworld and imgedit_items:
        summary["imgedit"] = imgedit_roundtrip(model, batch_size, imgedit_items)
    summary["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if grid is not None:
            _to_pil(grid).save(out / "recon_grid.png")
    return summary


# -----------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", default=None, help="VQ folder, preset name or upstream .pt (default: the shipped ShapeWorld VQ)")
    a("--out", required=True, help="output folder for summary.json and recon_grid.png")
    a("--data", default="shapeworld", help="shapeworld (held-out scenes) or an image folder / record dataset / list")
    a("--n", type=int, default=500, help="number of images")
    a("--batch-size", type=int, default=32)
    a("--resolution", type=int, default=None, help="image side (default: the model's resolution)")
    a("--inception", default=None, help="local TorchScript Inception for rFID (never downloaded)")
    a("--no-geneval", action="store_true", help="skip the ShapeGenEval reference-scene round trip")
    a("--geneval-per-tag", type=int, default=None, help="limit ShapeGenEval prompts per tag")
    a("--images-per-prompt", type=int, default=4, help="ShapeGenEval reference scenes per prompt (GenEval: 4)")
    a("--imgedit-items", type=int, default=200,
      help="ShapeImgEdit items whose ground-truth targets are round-tripped (200 = the benchmark; 0 skips)")
    a("--device", default="cpu")
    a("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a shared machine)")


def run(args: argparse.Namespace) -> int:
    if args.n <= 0 or args.batch_size <= 0 or args.images_per_prompt <= 0:
        raise ValueError("--n, --batch-size and --images-per-prompt must be > 0")
    if args.imgedit_items < 0:
        raise ValueError(f"--imgedit-items must be >= 0, got {args.imgedit_items}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_vq(args.model, device=args.device)
    summary = evaluate(model, data=args.data, n=args.n, batch_size=args.batch_size, resolution=args.resolution,
                       inception=args.inception, geneval=not args.no_geneval, geneval_per_tag=args.geneval_per_tag,
                       images_per_prompt=args.images_per_prompt, imgedit_items=args.imgedit_items,
                       out=Path(args.out))
    keys = ("psnr", "ssim", "ssim_llamagen", "usage", "perplexity", "roundtrip", "roundtrip_oracle", "rfid")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    if summary.get("geneval"):
        for tag, v in summary["geneval"].items():
            print(f"  geneval {tag:14s} oracle {v['oracle']:.3f}  recon {v['recon']:.3f}  ratio {v['ratio']:.3f}")
    if summary.get("imgedit"):
        ie = summary["imgedit"]
        print(f"  imgedit ceiling {ie['overall']:.2f} (ground truth 5.00): " +
              ", ".join(f"{t} {v:.2f}" for t, v in ie["tasks"].items()))
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
