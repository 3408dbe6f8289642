"""`star train vq`: train the image tokenizer (STAR-VQ or any VQConfig) on ShapeWorld or your own images.

Loss = l1 * |x - x̂| + l2 * (x - x̂)^2 + codebook + commitment (+ entropy) [+ perceptual] [+ adversarial]:
  - perceptual (LPIPS-style on VGG16 features) runs only with a local weights file (`--perceptual-weights`);
  - adversarial (PatchGAN, hinge) trains its discriminator from scratch; nothing is ever downloaded.
Dead codes (unused over `--restart-every` steps, counted over all ranks) are re-initialised from encoder outputs.

Runs single-process or under torchrun (`--parallel ddp|fsdp`, gloo on CPU, NCCL on GPU):

    star train vq --out runs/vq-shapes --steps 2000                       # ShapeWorld, `shapes` preset
    star train vq --data /path/to/images --preset star-vq --out runs/vq   # your images
    torchrun --nproc-per-node 2 -m star.cli train vq --out runs/vq --parallel ddp

Run folder: config.json (VQConfig), train_config.json, log.jsonl (one JSON object per logged step), checkpoint.pt
(latest full training state; `--resume` continues from it exactly), samples/step_XXXXXXX.png (top row: inputs,
bottom row: reconstructions), model/ (save_pretrained folder: config.json + model.safetensors).
Batches are a pure function of (seed, step, rank), so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from star.image_data import open_image_dataset, tensor_to_uint8
from star.io import atomic_write
from star.training.runlog import RunLog
from star.vq import PRESETS, VQConfig, VQModel, kmeans_codebook, load_vq, nearest_codes, preset, save_folder


# -----------------------------------------------------------------------------
# Config


@dataclass(kw_only=True)
class VQTrainConfig:
    """One tokenizer training run. Saved to OUT/train_config.json."""

    out: str
    """Run folder (checkpoint, log, samples, final model)."""
    data: str = "shapeworld"
    """Images: 'shapeworld[:N[:SEED[:V[:C[:E]]]]]', a folder (recursive), a record dataset folder or a .txt list."""
    preset: str = "shapes"
    """VQ architecture preset (see star.vq.PRESETS); ignored when `model_config` is given."""
    model_config: str | None = None
    """Path to a VQConfig JSON (e.g. another run's config.json) instead of a preset."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """VQConfig field overrides applied on top of the preset/config (e.g. {'codebook_size': 256})."""
    init: str | None = None
    """Start from these weights (a save_pretrained folder or upstream VQ-Model.pt) instead of random init; `overrides`
    may change fields that keep every weight's shape (e.g. local_decoder)."""
    freeze: tuple[str, ...] = ()
    """Parameter-name prefixes kept fixed, e.g. ('encoder', 'quant_conv', 'quantize') to train a new decoder for an
    existing code space (every code stays what it was, so models trained on its codes stay valid)."""
    resolution: int | None = None
    """Training image side; None = the VQConfig's resolution."""
    crop: Literal["stretch", "center"] = "stretch"
    """Resize policy for image files: stretch (upstream) or keep aspect and centre-crop."""
    crop_size: int | None = None
    """Train on random crops of this side (a multiple of the downsample factor, at offsets that are multiples of it,
    so codes stay on the image's cell grid); None = whole images. Cheaper steps; the model is fully convolutional."""
    crops_per_image: int = 1
    """Independent crops taken from every loaded image (with crop_size): a step sees batch_size * crops_per_image
    crops for the cost of loading batch_size images."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 16
    """Images per step per process."""
    lr: float = 2e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor as a fraction of lr."""
    warmup: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay on conv weights (never on norms, biases or the codebook)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    l2_weight: float = 1.0
    """Weight of the L2 reconstruction loss."""
    edge_weight: float = 0.0
    """Weight of the edge loss: L1 between the neighbour differences of reconstruction and image (see vq_loss)."""
    perceptual_weight: float = 0.0
    """Weight of the perceptual loss; needs `perceptual_weights`."""
    perceptual_weights: str | None = None
    """Local torchvision-layout VGG16 state dict (features.* keys) for the perceptual loss."""
    perceptual_heads: str | None = None
    """Optional local LPIPS linear-head weights (lin0..lin4); without them channels are weighted equally."""
    adv_weight: float = 0.0
    """Weight of the adversarial (hinge) generator loss; 0 = no discriminator."""
    adv_start: int = 0
    """Step at which the adversarial loss switches on."""
    disc_lr: float | None = None
    """Discriminator learning rate (None = lr)."""
    ae_warmup: int = 0
    """Train the first N steps as a plain autoencoder (the decoder gets the unquantized latents), then initialise the
    codebook by k-means on encoder latents and train as a VQ from there; 0 = quantize from the first step. On
    ShapeWorld this skips the long phase where a randomly initialised codebook decodes every cell as background."""
    dict_warmup: int = 0
    """Dictionary warm-up: for the first N steps each cell's code is fixed by k-means on raw pixel patches (one
    downsample-sized patch per code); the decoder learns to draw those codes and the encoder to choose them
    (cross-entropy over its distances to the codebook), then training continues as a plain VQ. A classification
    signal instead of a pixel regression for which code a cell gets: on ShapeWorld's grid-aligned cells it settles
    what the object in a cell is (class, colour) long before the pixel losses alone would. 0 = off; exclusive with
    ae_warmup."""
    kmeans_images: int = 2048
    """Images whose latents (ae_warmup) or pixel patches (dict_warmup) the k-means initialisation clusters."""
    kmeans_iters: int = 20
    """Lloyd iterations of that k-means."""
    restart_every: int = 50
    """Check for dead codes every N steps and re-seed them from encoder outputs (0 = never)."""
    restart_stop: float = 0.8
    """No restarts after this fraction of the steps, so the decoder learns every code it will be given."""
    log_every: int = 10
    """Write a log.jsonl line every N steps."""
    sample_every: int = 200
    """Write a reconstruction grid every N steps (and at the end)."""
    save_every: int = 200
    """Write checkpoint.pt and model/ every N steps (and at the end)."""
    time_limit: float | None = None
    """Stop (saving first) after this many minutes of training."""
    seed: int = 0
    """Seed for init, data order and restarts."""
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    """Data parallelism: auto = ddp under torchrun with >1 process, else none."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK when available, else cpu), or a torch device string."""
    amp: Literal["none", "bf16"] = "none"
    """Autocast dtype for encoder/decoder (the code search is fp32 regardless)."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    threads: int | None = None
    """torch CPU threads per process (None = torch default)."""
    resume: bool = False
    """Continue from OUT/checkpoint.pt when it exists."""
    progress: bool = True
    """Show a progress bar (rank 0)."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "sample_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup", "ae_warmup", "dict_warmup", "kmeans_iters", "restart_every", "adv_start", "num_workers",
                     "grad_clip", "weight_decay",
                     "l1_weight", "l2_weight", "edge_weight", "perceptual_weight", "adv_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.ae_warmup and self.dict_warmup:
            raise ValueError("train.ae_warmup and train.dict_warmup are alternatives; set one of them")
        if self.kmeans_images <= 0:
            raise ValueError(f"train.kmeans_images must be > 0, got {self.kmeans_images}")
        if not 0 <= self.restart_stop <= 1:
            raise ValueError(f"train.restart_stop must be in [0, 1], got {self.restart_stop}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.lr must be > 0 and train.min_lr_ratio in [0, 1], got {self.lr}, "
                             f"{self.min_lr_ratio}")
        if self.preset not in PRESETS and self.model_config is None:
            raise ValueError(f"train.preset {self.preset!r} is unknown; choose one of {sorted(PRESETS)}")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError("train.perceptual_weight > 0 needs --perceptual-weights PATH (a local VGG16 state dict); "
                             "nothing is downloaded")
        if self.l1_weight + self.l2_weight + self.perceptual_weight == 0:
            raise ValueError("at least one reconstruction loss (l1, l2 or perceptual) must have a weight > 0")
        if self.init and self.model_config:
            raise ValueError("train.init takes its architecture from the initial weights; drop --model-config")
        self.freeze = tuple(self.freeze)
        if self.crop_size is not None and self.crop_size <= 0:
            raise ValueError(f"train.crop_size must be > 0, got {self.crop_size}")
        if self.crops_per_image < 1 or (self.crops_per_image > 1 and self.crop_size is None):
            raise ValueError(f"train.crops_per_image must be >= 1 and needs crop_size, got {self.crops_per_image}")
        if self.parallel not in ("auto", "none", "ddp", "fsdp"):
            raise ValueError(f"train.parallel must be auto, none, ddp or fsdp, got {self.parallel!r}")

    def vq_config(self) -> VQConfig:
        if self.model_config:
            base = json.loads(Path(self.model_config).read_text())
            return VQConfig.from_dict({**base, **self.overrides})
        return preset(self.preset, **self.overrides)


# -----------------------------------------------------------------------------
# Optional losses: perceptual (local VGG16 weights only) and a PatchGAN discriminator (from scratch)

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's `features` indices


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen VGG16 features, from a local torchvision-layout state dict.

    Features at the five taps are unit-normalised over channels; squared differences are weighted per channel by the
    LPIPS linear heads when given, else averaged, then averaged over space and summed over taps.
    """

    def __init__(self, weights: str, heads: str | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        state = _load_local(weights, "perceptual VGG16 weights")
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k.startswith("features.")]
        if missing or result.unexpected_keys:
            raise KeyError(f"{weights} is not a torchvision VGG16 state dict: missing={missing[:4]} "
                           f"unexpected={result.unexpected_keys[:4]}")
        widths = [64, 128, 256, 512, 512]
        self.heads = None
        if heads:
            hs = _load_local(heads, "LPIPS linear heads")
            try:
                self.heads = nn.ParameterList([nn.Parameter(hs[f"lin{i}.model.1.weight"].reshape(1, w, 1, 1))
                                               for i, w in enumerate(widths)])
            except (KeyError, RuntimeError) as exc:
                raise KeyError(f"{heads} is not an LPIPS head file (lin0..lin4.model.1.weight): {exc}") from exc
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # (B, 3, H, W) in [-1, 1] twice -> ()
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        total, tap = x.new_zeros(()), 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG16_TAPS:
                fx, fy = F.normalize(h, dim=1, eps=1e-10).chunk(2)
                d = (fx - fy).pow(2)
                d = (d * self.heads[tap]).sum(1) if self.heads is not None else d.mean(1)
                total, tap = total + d.mean(), tap + 1
            if i == VGG16_TAPS[-1]:
                break
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided conv stack -> one logit per patch. Trained from scratch with the hinge loss."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_next = channels * min(2 ** i, 8)
            blocks += [nn.Conv2d(c, c_next, 4, 2 if i < layers else 1, 1), nn.GroupNorm(32 if c_next % 32 == 0 else 1,
                                                                                        c_next), nn.LeakyReLU(0.2)]
            c = c_next
        blocks.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, 1, h', w') logits
        return self.net(x)


def _load_local(path: str, what: str) -> dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} not found; pass a local file (nothing is downloaded)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


# -----------------------------------------------------------------------------
# Distributed helpers (the model itself knows nothing about parallelism)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        from star.training.parallel import parse_device

        dev = parse_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=local, device=dev)


def all_reduce_(t: Tensor, env: Dist) -> Tensor:
    if env.world > 1:
        dist.all_reduce(t)
    return t


def broadcast_(t: Tensor, env: Dist) -> Tensor:
    if env.world > 1:
        dist.broadcast(t, src=0)
    return t


class StepBatchSampler(Sampler[list[int]]):
    """Batch indices as a pure function of (seed, step, rank): resume-exact and identical under any loader state."""

    def __init__(self, n: int, batch_size: int, env: Dist, seed: int, start_step: int, steps: int):
        self.n, self.batch_size, self.env, self.seed = n, batch_size, env, seed
        self.start_step, self.steps = start_step, steps

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            rng = np.random.default_rng([self.seed, step])
            total = self.batch_size * self.env.world
            idx = rng.choice(self.n, size=total, replace=total > self.n)
            yield idx[self.env.rank * self.batch_size:(self.env.rank + 1) * self.batch_size].tolist()


# -----------------------------------------------------------------------------
# State access that works for plain modules, DDP and FSDP2 (DTensor parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_model_state(model: nn.Module, fsdp: bool) -> dict[str, Tensor]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def full_optim_state(model: nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def load_full_state(model: nn.Module, opt: torch.optim.Optimizer, model_sd: dict, opt_sd: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_sd, options=options)
        set_optimizer_state_dict(model, opt, opt_sd, options=options)
    else:
        unwrap(model).load_state_dict(model_sd, strict=True)
        opt.load_state_dict(opt_sd)


def _write_rows_(param: Tensor, rows: Tensor, values: Tensor) -> None:
    """param[rows] = values, for a plain tensor or an FSDP2-sharded DTensor (rows are global indices)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        full = param.full_tensor()
        full[rows] = values.to(full.dtype)
        param.copy_(distribute_tensor(full, param.device_mesh, param.placements))
    else:
        param[rows] = values.to(param.dtype)


@torch.no_grad()
def restart_dead_codes(model: nn.Module, opt: torch.optim.Optimizer, latents: Tensor, env: Dist,
                       generator: torch.Generator, errors: Tensor | None = None) -> tuple[int, Tensor]:
    """Re-seed codes unused since the last check with rank 0's current encoder outputs; reset their Adam moments.

    With `errors` (each latent's squared distance to its code) the new codes are drawn with probability proportional
    to the error, k-means++ style: they land where the codebook serves the data worst (on ShapeWorld: rare object
    colours rather than the background that covers most cells). Returns (number restarted, the usage counts of the
    window summed over ranks). Counts are reset afterwards.
    """
    q = unwrap(model).quantize
    counts = all_reduce_(q.usage_counts.clone(), env)
    dead = torch.nonzero(counts == 0).flatten()
    q.reset_usage()
    if dead.numel() == 0:
        return 0, counts
    n = latents.shape[0]
    if errors is not None and float(errors.sum()) > 0:
        weights = errors.detach().double().cpu()
        pick = torch.multinomial(weights, dead.numel(), replacement=dead.numel() > int((weights > 0).sum()),
                                 generator=generator)
    else:
        pick = torch.randint(0, n, (dead.numel(),), generator=generator)
    values = latents[pick.to(latents.device)].float()
    values = values + 0.01 * values.std().clamp_min(1e-6) * torch.randn(values.shape, generator=generator).to(values)
    values = broadcast_(values.contiguous(), env)                      # everyone adopts rank 0's vectors
    weight = q.embedding.weight
    _write_rows_(weight, dead.to(weight.device), values)
    state = opt.state.get(weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            _write_rows_(state[key], dead.to(weight.device), torch.zeros_like(values))
    return int(dead.numel()), counts


@torch.no_grad()
def kmeans_init_codebook(model: nn.Module, opt: torch.optim.Optimizer, dataset, cfg: VQTrainConfig, env: Dist,
                         autocast) -> None:
    """Set every code to a k-means centroid of the encoder latents of `cfg.kmeans_images` images; reset the codebook's
    Adam moments. Every rank encodes the same images (FSDP needs all ranks in the forward) and adopts rank 0's
    result."""
    core = unwrap(model)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7)
    idx = torch.randperm(len(dataset), generator=gen)[:cfg.kmeans_images].tolist()
    was_training = model.training
    model.eval()
    latents = []
    for i in range(0, len(idx), cfg.batch_size):
        images = torch.stack([dataset[j] for j in idx[i:i + cfg.batch_size]]).to(env.device)
        with autocast():
            z = core.encode_latents(images).float()                       # (b, d, h, w)
        latents.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    model.train(was_training)
    vq_cfg = core.config
    centres = kmeans_codebook(torch.cat(latents), vq_cfg.codebook_size, cfg.kmeans_iters,
                              l2_norm=vq_cfg.codebook_l2_norm, generator=gen, block=vq_cfg.search_block)
    centres = broadcast_(centres.to(env.device).contiguous(), env)
    weight = core.quantize.embedding.weight
    rows = torch.arange(vq_cfg.codebook_size, device=weight.device)
    _write_rows_(weight, rows, centres)
    state = opt.state.get(weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            _write_rows_(state[key], rows, torch.zeros_like(centres))
    core.quantize.reset_usage()


def pixel_dictionary(dataset, vq_cfg: VQConfig, images: int, iters: int, seed: int) -> Tensor:
    """k-means centroids of the raw pixel patches (one code cell each) of `images` images of `dataset` -> (K, 3*f*f).

    Equal patches are clustered once, weighted by their count, and every patch seen more than once seeds its own
    centre, most frequent first: in a world of exact tiles (ShapeWorld) each of the K most common tiles is a code of
    its own instead of sharing one with a look-alike; on natural images, where patches do not repeat, it is plain
    k-means++. A pure function of its arguments, so a resumed run (or another rank) rebuilds the same dictionary."""
    f = vq_cfg.downsample
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 11)
    idx = torch.randperm(len(dataset), generator=gen)[:images].tolist()
    patches = torch.cat([F.pixel_unshuffle(torch.stack([dataset[j] for j in idx[i:i + 256]]), f)
                         .permute(0, 2, 3, 1).reshape(-1, vq_cfg.in_channels * f * f)
                         for i in range(0, len(idx), 256)])                # (n*h*w, 3*f*f)
    unique, counts = torch.unique(patches, dim=0, return_counts=True)     # (U, 3*f*f), (U,)
    order = counts.argsort(descending=True, stable=True)
    unique, counts = unique[order], counts[order]
    if unique.shape[0] < vq_cfg.codebook_size:                            # fewer distinct patches than codes
        unique, counts = patches, torch.ones(patches.shape[0], dtype=torch.long)
    return kmeans_codebook(unique, vq_cfg.codebook_size, iters, generator=gen, block=vq_cfg.search_block,
                           weights=counts, seeds=int((counts > 1).sum()))


def principal_coordinates(points: Tensor, dim: int) -> Tensor:
    """(K, D) -> (K, dim): the points' coordinates on their top `dim` principal axes, each axis scaled to unit variance
    (zero-padded when dim exceeds the rank). Code vectors made this way start out meaning what their patches look
    like, so the decoder begins near a linear map back to pixels instead of learning a lookup table of random codes."""
    centred = points.double() - points.double().mean(0)
    u, sv, _ = torch.linalg.svd(centred, full_matrices=False)
    coords = (u * sv)[:, :dim]                                            # (K, min(dim, rank))
    coords = coords / coords.std(0).clamp_min(1e-8)
    return F.pad(coords, (0, dim - coords.shape[1])).float()


def patch_codes(images: Tensor, dictionary: Tensor, f: int, block: int) -> Tensor:
    """(B, 3, H, W) -> (B, H/f, W/f): the index of the nearest dictionary patch of every f x f cell."""
    b, _, h, w = images.shape
    patches = F.pixel_unshuffle(images, f).permute(0, 2, 3, 1).reshape(-1, dictionary.shape[1])
    return nearest_codes(patches, dictionary, block=block)[0].reshape(b, h // f, w // f)


# -----------------------------------------------------------------------------
# Loss


def vq_loss(out, images: Tensor, l1_weight: float = 1.0, l2_weight: float = 1.0, edge_weight: float = 0.0,
            quantizer_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """l1 * |x - x̂| + l2 * (x - x̂)^2 + edge * |∇x - ∇x̂| + quantizer_weight * (codebook + commitment + entropy)
    + target_ce (the dictionary warm-up's code-choice loss; 0 otherwise).

    The edge term is the L1 distance of horizontal and vertical neighbour differences: it weighs outlines, where the
    pixel losses see only a thin rim (on ShapeWorld: an object's class lives in its outline, its colour in its area).
    The one definition of the tokenizer's base objective (the optional perceptual and adversarial terms are added by
    `train`); the generic trainer's vq stage uses it too. quantizer_weight = 0 during the autoencoder warm-up."""
    recon = out.recon.float()
    rec_l1 = (recon - images).abs().mean()
    rec_l2 = (recon - images).pow(2).mean()
    quantizer = out.codebook_loss + out.commit_loss + out.entropy_loss
    loss = l1_weight * rec_l1 + l2_weight * rec_l2 + quantizer_weight * quantizer + out.target_ce
    terms = {"l1": rec_l1, "l2": rec_l2, "codebook": out.codebook_loss, "commit": out.commit_loss,
             "entropy": out.entropy_loss, "target_ce": out.target_ce}
    if edge_weight > 0:
        err = recon - images
        terms["edge"] = ((err[..., :, 1:] - err[..., :, :-1]).abs().mean()
                         + (err[..., 1:, :] - err[..., :-1, :]).abs().mean())
        loss = loss + edge_weight * terms["edge"]
    return loss, terms


# -----------------------------------------------------------------------------
# Small utilities


def random_aligned_crops(images: Tensor, size: int, align: int, seed: int, step: int, rank: int) -> Tensor:
    """(B, 3, R, R) -> (B, 3, size, size): one crop per image at offsets that are multiples of `align`, seeded by
    (seed, step, rank) so that resumed runs crop identically."""
    rng = np.random.default_rng([seed, step, rank, 17])
    slots = (images.shape[-1] - size) // align + 1
    offsets = rng.integers(0, slots, size=(images.shape[0], 2)) * align
    return torch.stack([img[:, y:y + size, x:x + size] for img, (y, x) in zip(images, offsets.tolist())])


def lr_at(step: int, cfg: VQTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim == 4 and weight_decay > 0 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def usage_stats(counts: Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity exp(H)) of a code histogram."""
    counts = counts.double()
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float((counts > 0).double().mean()), float(torch.exp(-(p * p.log()).sum()))


def save_grid(path: Path, originals: Tensor, recons: Tensor) -> None:
    """Two rows (inputs over reconstructions) of (B, 3, H, W) images in [-1, 1] -> one PNG, atomically."""
    top, bottom = tensor_to_uint8(originals), tensor_to_uint8(recons)      # (B, H, W, 3) each
    grid = np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
# Training


def train(cfg: VQTrainConfig) -> dict[str, Any]:
    """Run (or resume) one training run; returns the last logged metrics."""
    env = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    if env.world > 1:
        dist.barrier()
    parallel = cfg.parallel if cfg.parallel != "auto" else ("ddp" if env.world > 1 else "none")
    if parallel != "none" and env.world == 1 and not dist.is_initialized():
        parallel = "none"  # a single process needs no wrapper
    fsdp = parallel == "fsdp"

    # -------------------------------------------------------------------------
    # Model (same init on every rank), optional discriminator and perceptual net
    torch.manual_seed(cfg.seed)
    vq_cfg = cfg.vq_config()
    model = load_vq(cfg.init).train() if cfg.init else VQModel(vq_cfg)
    if cfg.init and cfg.overrides:                   # same weights, other behaviour (e.g. local_decoder)
        changed = VQModel(VQConfig.from_dict({**model.config.to_dict(), **cfg.overrides}))
        changed.load_state_dict(model.state_dict(), strict=True)        # a shape change raises, naming the keys
        model = changed.train()
    vq_cfg = model.config
    frozen = 0
    for name, p in model.named_parameters():
        p.requires_grad_(not (cfg.freeze and name.startswith(cfg.freeze)))
        frozen += 0 if p.requires_grad else p.numel()
    if cfg.freeze and not frozen:
        raise ValueError(f"train.freeze {list(cfg.freeze)} matches no parameter; names start with "
                         f"{sorted({n.split('.')[0] for n, _ in model.named_parameters()})}")
    if not model.quantize.embedding.weight.requires_grad and (cfg.restart_every or cfg.dict_warmup or cfg.ae_warmup):
        raise ValueError("a frozen codebook (--freeze quantize) cannot be re-seeded: set --restart-every 0 and no "
                         "--dict-warmup/--ae-warmup")
    resolution = cfg.resolution or vq_cfg.resolution
    if resolution % vq_cfg.downsample:
        raise ValueError(f"--resolution {resolution} is not divisible by the tokenizer's downsample "
                         f"{vq_cfg.downsample}")
    if cfg.crop_size is not None and (cfg.crop_size % vq_cfg.downsample or cfg.crop_size > resolution):
        raise ValueError(f"--crop-size {cfg.crop_size} must be a multiple of the downsample factor "
                         f"{vq_cfg.downsample} and at most the resolution {resolution}")
    model.to(env.device)
    disc = PatchDiscriminator().to(env.device) if cfg.adv_weight > 0 else None
    perceptual = (PerceptualLoss(cfg.perceptual_weights, cfg.perceptual_heads).to(env.device)
                  if cfg.perceptual_weight > 0 else None)
    if parallel == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        with warnings.catch_warnings():  # usage_counts is rank-local on purpose: never sync buffers
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        if disc is not None:
            disc = nn.parallel.DistributedDataParallel(disc, device_ids=ids)
    elif fsdp:
        from torch.distributed.fsdp import fully_shard
        for part in (model.encoder, model.decoder):
            fully_shard(part)
        fully_shard(model)
        if disc is not None:
            fully_shard(disc)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    disc_opt = (torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9))
                if disc is not None else None)
    n_params = sum(p.numel() for p in model.parameters())  # global sizes, also for FSDP2's sharded DTensors

    # -------------------------------------------------------------------------
    # Resume
    start_step, elapsed_before = 0, 0.0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.is_file() and not cfg.resume:
        raise ValueError(f"{out} already holds a run ({ckpt_path}); pass --resume to continue it, or choose another "
                         f"--out")
    if cfg.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["vq_config"] != vq_cfg.to_dict():
            raise ValueError(f"{ckpt_path} was trained with a different VQ config; use a new --out or matching flags.\n"
                             f"checkpoint: {ckpt['vq_config']}\nnow: {vq_cfg.to_dict()}")
        bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"{ckpt_path} holds NaN/Inf in {bad[:5]}; the run diverged before this save. "
                             f"Restart from scratch or an earlier checkpoint with a lower --lr")
        load_full_state(model, opt, ckpt["model"], ckpt["optimizer"], fsdp)
        if disc is not None and "disc" in ckpt:
            load_full_state(disc, disc_opt, ckpt["disc"], ckpt["disc_optimizer"], fsdp)
        start_step, elapsed_before = ckpt["step"], ckpt.get("elapsed", 0.0)
        unwrap(model).quantize.usage_counts.copy_(ckpt["usage_counts"].to(env.device))
        if env.main:
            print(f"resumed from {ckpt_path} at step {start_step}")
    elif cfg.resume and env.main:
        print(f"--resume: no {ckpt_path} yet, starting from scratch")
    if env.main:
        RunLog(out / "log.jsonl", True, keep_until=start_step if start_step else None).close()  # drop lines past it
        atomic_write(out / "config.json", json.dumps(vq_cfg.to_dict(), indent=2))
        atomic_write(out / "train_config.json", json.dumps(asdict(cfg), indent=2))
        print(f"VQ {n_params:,} params | codebook {vq_cfg.codebook_size} x {vq_cfg.code_dim} | {resolution}px -> "
              f"{resolution // vq_cfg.downsample}^2 codes | {parallel} x{env.world} on {env.device} | out {out}")
        if frozen:
            print(f"frozen: {frozen:,} params ({', '.join(cfg.freeze)})")

    # -------------------------------------------------------------------------
    # Data
    dataset = open_image_dataset(cfg.data, resolution, cfg.crop)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, env, cfg.seed, start_step, cfg.steps)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                        persistent_workers=False, pin_memory=env.device.type == "cuda")
    fixed = torch.stack([dataset[i] for i in range(min(8, len(dataset)))]).to(env.device)  # grid images
    dictionary = None
    if cfg.dict_warmup and start_step < cfg.dict_warmup:
        dictionary = pixel_dictionary(dataset, vq_cfg, cfg.kmeans_images, cfg.kmeans_iters, cfg.seed)
        dictionary = broadcast_(dictionary.to(env.device).contiguous(), env)      # every rank adopts rank 0's
        if start_step == 0:                       # codes start as the principal coordinates of their patches
            weight = unwrap(model).quantize.embedding.weight
            init = principal_coordinates(dictionary.cpu(), vq_cfg.code_dim)
            with torch.no_grad():
                _write_rows_(weight, torch.arange(weight.shape[0], device=weight.device),
                             broadcast_(init.to(env.device), env))
        if env.main:
            print(f"dictionary warm-up: {vq_cfg.codebook_size} pixel-patch centroids from "
                  f"{min(cfg.kmeans_images, len(dataset))} images fix the codes of the first {cfg.dict_warmup} steps")

    # -------------------------------------------------------------------------
    # Loop
    def autocast():
        return torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")

    def save(step: int, elapsed: float) -> None:
        state = full_model_state(model, fsdp)
        ostate = full_optim_state(model, opt, fsdp)
        extra = {}
        if disc is not None:
            extra = {"disc": full_model_state(disc, fsdp), "disc_optimizer": full_optim_state(disc, disc_opt, fsdp)}
        if env.main:      # model/ first: a kill between the two then leaves the checkpoint behind, and resume redoes it
            save_folder(out / "model", vq_cfg, state)
            atomic_torch_save({"step": step, "elapsed": elapsed, "model": state, "optimizer": ostate,
                               "usage_counts": unwrap(model).quantize.usage_counts.cpu(),
                               "vq_config": vq_cfg.to_dict(), "train_config": asdict(cfg), **extra}, ckpt_path)
        if env.world > 1:
            dist.barrier()

    def sample(step: int) -> None:
        model.eval()
        with torch.no_grad(), autocast():
            recon = model(fixed, bypass=step < cfg.ae_warmup).recon.float()
        model.train()
        if env.main:
            save_grid(out / "samples" / f"step_{step:07d}.png", fixed, recon)

    log_counts = torch.zeros(vq_cfg.codebook_size, dtype=torch.long, device=env.device)
    window: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    bar = None
    if env.main and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start_step, desc="train vq", dynamic_ncols=True)
    t0, t_log, step = time.time(), time.time(), start_step
    model.train()
    for images in loader:
        images = images.to(env.device, non_blocking=True)
        if cfg.crop_size is not None and cfg.crop_size < resolution:
            images = random_aligned_crops(images.repeat_interleave(cfg.crops_per_image, 0), cfg.crop_size,
                                          vq_cfg.downsample, cfg.seed, step, env.rank)
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        use_adv = disc is not None and step >= cfg.adv_start
        if cfg.ae_warmup and step == cfg.ae_warmup:
            kmeans_init_codebook(model, opt, dataset, cfg, env, autocast)
            if env.main:
                print(f"step {step}: autoencoder warm-up done; codebook initialised by k-means on the latents of "
                      f"{min(cfg.kmeans_images, len(dataset))} images")
        bypass = step < cfg.ae_warmup                                     # autoencoder warm-up: no quantization
        targets = None
        if step < cfg.dict_warmup:                                        # dictionary warm-up: the codes are given
            targets = patch_codes(images, dictionary, vq_cfg.downsample, vq_cfg.search_block)

        with autocast():
            outp = model(images, bypass=bypass, targets=targets)
        recon = outp.recon.float()
        loss, terms = vq_loss(outp, images, cfg.l1_weight, cfg.l2_weight, cfg.edge_weight,
                              quantizer_weight=0.0 if bypass or targets is not None else 1.0)
        if targets is not None:
            terms["target_acc"] = (outp.codes == targets).float().mean()
        if perceptual is not None:
            terms["perceptual"] = perceptual(recon, images)
            loss = loss + cfg.perceptual_weight * terms["perceptual"]
        if use_adv:
            core = unwrap(disc)
            core.requires_grad_(False)
            terms["gen_adv"] = -core(recon).mean()
            core.requires_grad_(True)
            loss = loss + cfg.adv_weight * terms["gen_adv"]
        if not torch.isfinite(loss):
            detail = {k: float(v) for k, v in terms.items()}
            raise FloatingPointError(f"step {step}: loss is {loss.item()} ({detail}); "
                                     f"lower --lr or check the data (images must be in [-1, 1])")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            terms["grad_norm"] = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        opt.step()
        if use_adv:
            disc_opt.zero_grad(set_to_none=True)
            d_real, d_fake = disc(images), disc(recon.detach())
            d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            d_loss.backward()
            disc_opt.step()
            terms["disc"] = d_loss
        step += 1
        log_counts += torch.bincount(outp.codes.flatten(), minlength=vq_cfg.codebook_size)
        for k, v in terms.items():
            window[k] = window.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        window["n"] = window.get("n", 0) + 1
        if (cfg.restart_every and step % cfg.restart_every == 0 and step <= cfg.restart_stop * cfg.steps
                and step > max(cfg.ae_warmup, cfg.dict_warmup)):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)     # a function of the step: resumable
            restarted, _ = restart_dead_codes(model, opt, outp.latents, env, gen, outp.errors)
            window["restarted"] = window.get("restarted", 0) + restarted

        elapsed = elapsed_before + time.time() - t0
        if step % cfg.log_every == 0 or step == cfg.steps:
            counts = all_reduce_(log_counts.clone(), env)
            stats = torch.tensor([window[k] for k in sorted(window)], dtype=torch.float64)
            stats = all_reduce_(stats, env) / env.world
            avg = dict(zip(sorted(window), stats.tolist()))
            n = avg.pop("n")
            restarted = avg.pop("restarted", 0.0)  # identical on every rank
            usage, ppl = usage_stats(counts)
            metrics = {"step": step, "lr": lr, **{k: v / n for k, v in avg.items()},
                       "psnr": float(10 * math.log10(4.0 / max(avg["l2"] / n, 1e-12))),
                       "usage": usage, "perplexity": ppl, "restarted": int(round(restarted)),
                       "images_per_s": n * cfg.batch_size * env.world / max(time.time() - t_log, 1e-9),
                       "samples_per_s": n * images.shape[0] * env.world / max(time.time() - t_log, 1e-9),
                       "elapsed_s": round(elapsed, 1)}
            if env.main:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{metrics['l1']:.4f}", psnr=f"{metrics['psnr']:.1f}", usage=f"{usage:.2f}")
            window, t_log = {}, time.time()
            log_counts.zero_()
        if bar is not None:
            bar.update(1)
        stop = torch.tensor([1.0 if cfg.time_limit and elapsed > cfg.time_limit * 60 else 0.0])
        stop = bool(broadcast_(stop, env).item())
        if step % cfg.sample_every == 0 or step == cfg.steps or stop:
            sample(step)
        if step % cfg.save_every == 0 or step == cfg.steps or stop:
            save(step, elapsed)
        if stop:
            if env.main:
                print(f"time limit of {cfg.time_limit} min reached at step {step}; saved (resume with --resume)")
            break
    if bar is not None:
        bar.close()
    if step == start_step and env.main:
        print(f"nothing to do: checkpoint is already at step {step} of {cfg.steps}")
    return metrics


# -----------------------------------------------------------------------------
# CLI


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE (e.g. codebook_size=256), got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = VQTrainConfig(out="")
    a = parser.add_argument
    a("--out", required=True, help="run folder")
    a("--data", default=d.data,
      help="shapeworld[:N[:SEED[:V[:C[:E]]]]] (star.image_data), an image folder, a record dataset or a .txt list")
    a("--preset", default=d.preset, choices=sorted(PRESETS), help="VQ architecture preset")
    a("--model-config", default=None, help="VQConfig JSON instead of a preset")
    a("--set", action="append", default=[], metavar="FIELD=VALUE", help="VQConfig override, repeatable")
    a("--codebook-size", type=int, default=None, help="shortcut for --set codebook_size=N")
    a("--init", default=None, help="initial weights: a VQ folder or an upstream VQ-Model.pt")
    a("--freeze", type=lambda v: tuple(x for x in v.split(",") if x), default=(), metavar="PREFIX[,PREFIX]",
      help="keep these parameters fixed, e.g. --freeze encoder,quant_conv,quantize (train a new decoder)")
    a("--resolution", type=int, default=None)
    a("--crop", default=d.crop, choices=["stretch", "center"])
    a("--crop-size", type=int, default=None, help="train on random grid-aligned crops of this side")
    a("--crops-per-image", type=int, default=1, help="crops taken from each loaded image (with --crop-size)")
    for name in ("steps", "batch_size", "warmup", "ae_warmup", "dict_warmup", "kmeans_images", "kmeans_iters",
                 "restart_every", "log_every", "sample_every", "save_every",
                 "adv_start", "seed", "num_workers"):
        a("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "min_lr_ratio", "restart_stop", "weight_decay", "beta1", "beta2", "grad_clip", "l1_weight",
                 "l2_weight", "edge_weight", "perceptual_weight", "adv_weight"):
        a("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    a("--disc-lr", type=float, default=None)
    a("--perceptual-weights", default=None, help="local torchvision VGG16 state dict")
    a("--perceptual-heads", default=None, help="local LPIPS head weights (optional)")
    a("--time-limit", type=float, default=None, help="minutes; save and stop when exceeded")
    a("--parallel", default=d.parallel, choices=["auto", "none", "ddp", "fsdp"])
    a("--device", default=d.device)
    a("--amp", default=d.amp, choices=["none", "bf16"])
    a("--threads", type=int, default=None)
    a("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    a("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    overrides = _parse_set(args.set)
    if args.codebook_size is not None:
        overrides["codebook_size"] = args.codebook_size
    known = {f.name for f in fields(VQTrainConfig)} - {"overrides", "progress"}
    cfg = VQTrainConfig(**{k: v for k, v in vars(args).items() if k in known}, overrides=overrides,
                        progress=not args.no_progress)
    try:
        train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import sys
    p = argparse.ArgumentParser(prog="star train vq", description=__doc__)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
