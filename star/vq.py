"""STAR-VQ: the image tokenizer. Images become a grid of discrete codes and codes become images again.

Data flow (first and last stage of STAR):

    images (B, 3, H, W) in [-1, 1] ─▶ Encoder ─▶ (B, z, h, w) ─▶ quant_conv ─▶ (B, d, h, w)
        ─▶ VectorQuantizer ─▶ codes (B, h, w) int64 in [0, K)          h = H / f, w = W / f, f = 2**(levels - 1)
    codes ─▶ embed ─▶ (B, h, w, d) ─▶ post_quant_conv ─▶ (B, z, h, w) ─▶ Decoder ─▶ images (B, 3, H, W)

Public API (stable; the STAR model and the pipeline call only these):

    VQModel(config)                       build from a VQConfig (or `VQModel.from_preset("shapes")`)
    model.encode(images)   -> codes       (B, 3, H, W) float in [-1, 1]  ->  (B, h, w) int64
    model.decode(codes)    -> images      (B, h, w) or (B, h*w) for square grids  ->  (B, 3, H, W) float, unclamped
    model.embed(codes)     -> vectors     codes of any shape (...)  ->  (..., code_dim), the codebook rows
                                          (unit-normalised rows when `codebook_l2_norm`)
    model.config.codebook_size, model.config.code_dim, model.config.downsample
    model.save_pretrained(dir) / VQModel.from_pretrained(dir)   folder = config.json + model.safetensors
    load_upstream_vq(path)  -> (model, LoadReport)   upstream STAR `VQ-Model.pt`, strict key check with a report
    load_vq(spec)           -> model                 None (shipped `shapes`), a folder, a preset name or an upstream .pt

Architecture and parameter names follow upstream STAR's `VQ_Model` (LlamaGen's VQGAN `VQModel` with multi-head
attention), so an upstream state dict loads with identical key names: `encoder.conv_in`, `encoder.conv_blocks.{i}.res.
{j}.{norm1,conv1,norm2,conv2,nin_shortcut}`, `encoder.conv_blocks.{i}.attn.{j}.{norm,q,k,v,proj_out}`,
`encoder.conv_blocks.{i}.downsample.conv`, `encoder.mid.{0,1,2}`, `encoder.norm_out`, `encoder.conv_out`, the mirror
image under `decoder.` (`upsample.conv`), `quant_conv`, `post_quant_conv` and `quantize.embedding.weight`.
The only upstream key without a counterpart is the training-time usage window `quantize.codebook_used`, which the
converter drops and reports. The code here is written for this project; upstream was read only for names and shapes.

The nearest-code search never copies the codebook per image and never builds the full (tokens x codes) distance
matrix: it walks the codebook in chunks with a running minimum, in fp32 (see `nearest_codes`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

ASSETS = Path(__file__).parent / "assets"
SHIPPED_SHAPES_DIR = ASSETS / "vq-shapes"


# -----------------------------------------------------------------------------
# Config and presets


@dataclass(kw_only=True)
class VQConfig:
    """Every size of the tokenizer. Saved as `config.json` next to the weights."""

    in_channels: int = 3
    """Channels of the input images (3 = RGB)."""
    out_channels: int = 3
    """Channels of the decoded images."""
    patch_size: int = 1
    """Space-to-depth factor of the stem: the encoder first folds p x p pixel patches into channels (pixel_unshuffle)
    and the decoder ends by unfolding them (pixel_shuffle); 1 = none (upstream). Downsample = p * 2**(len(ch_mult)-1).
    A large p trades the full-resolution convolutions (most of the compute) for width at low resolution."""
    local_encoder: bool = False
    """Encode every code cell from its own pixels only: the encoder runs on each downsample x downsample cell as a
    separate image, so a code is a function of its cell (no context from neighbours, attention or border padding).
    Off upstream. On for ShapeWorld, whose cells are exact tiles: a context-free code makes equal tiles equal codes,
    which is what keeps the code sequences as predictable as the scenes (docs/vq.md)."""
    local_decoder: bool = False
    """Decode every cell from its own code only (the decoder runs on each code as a 1 x 1 latent): no colour or
    shape bleeds from one cell into another. Off upstream and in the `shapes` preset: at this width it drew tiles at
    ~34 dB where a contextual decoder on the same codes reached 48.5 dB (docs/vq.md)."""
    ch: int = 128
    """Base channel width; level i of the encoder/decoder has ch * ch_mult[i] channels."""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    """Channel multiplier per resolution level; len(ch_mult) - 1 stride-2 steps, so downsample = 2**(len - 1)."""
    num_res_blocks: int = 2
    """Residual blocks per level in the encoder."""
    decoder_res_blocks: int | None = None
    """Residual blocks per level in the decoder; None means num_res_blocks + 1 (the upstream layout)."""
    attn_heads: int = 1
    """Heads of the self-attention blocks (lowest resolution level and middle block)."""
    z_channels: int = 256
    """Channels of the latent between encoder/decoder and the 1x1 projections into/out of the code space."""
    norm_groups: int = 32
    """Groups of every GroupNorm; every channel width must be divisible by it."""
    dropout: float = 0.0
    """Dropout inside residual blocks."""
    codebook_size: int = 16384
    """K: number of codes."""
    code_dim: int = 8
    """d: dimension of each code vector."""
    codebook_l2_norm: bool = False
    """Search and embed with unit-normalised codes and latents (cosine similarity) instead of raw Euclidean."""
    commit_beta: float = 0.25
    """Weight of the commitment loss ||z - sg(e)||^2 (the codebook loss ||sg(z) - e||^2 has weight 1)."""
    entropy_loss_ratio: float = 0.0
    """Weight of the entropy loss (sample entropy minus batch entropy of the soft code assignment); 0 = off."""
    entropy_temperature: float = 0.01
    """Softmax temperature of the entropy loss over negative distances."""
    resolution: int = 256
    """Default image side the tokenizer is trained and evaluated at (encode accepts any multiple of `downsample`)."""
    search_block: int = 1 << 24
    """Most elements of one distance block in the nearest-code search (tokens x codes chunk, fp32)."""

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        positive = ("in_channels", "out_channels", "patch_size", "ch", "num_res_blocks", "attn_heads", "z_channels",
                "norm_groups",
                    "codebook_size", "code_dim", "resolution", "search_block")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"vq.{name} must be > 0, got {getattr(self, name)}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"vq.ch_mult must be a non-empty list of positive ints, got {list(self.ch_mult)}")
        if self.decoder_res_blocks is not None and self.decoder_res_blocks <= 0:
            raise ValueError(f"vq.decoder_res_blocks must be > 0 or None, got {self.decoder_res_blocks}")
        for width in sorted({self.ch * m for m in self.ch_mult} | {self.ch}):
            if width % self.norm_groups:
                raise ValueError(f"vq: channel width {width} (ch={self.ch} x ch_mult) is not divisible by "
                                 f"norm_groups={self.norm_groups}; GroupNorm needs whole groups")
        lowest = self.ch * self.ch_mult[-1]
        if lowest % self.attn_heads:
            raise ValueError(f"vq.attn_heads={self.attn_heads} must divide the lowest-level width {lowest}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vq.dropout must be in [0, 1), got {self.dropout}")
        if self.commit_beta < 0 or self.entropy_loss_ratio < 0 or self.entropy_temperature <= 0:
            raise ValueError("vq.commit_beta and vq.entropy_loss_ratio must be >= 0 and vq.entropy_temperature > 0")
        if self.resolution % self.downsample:
            raise ValueError(f"vq.resolution={self.resolution} must be divisible by the downsample factor "
                             f"{self.downsample} (patch_size * 2**(len(ch_mult)-1))")

    @property
    def downsample(self) -> int:
        """Pixels per code along each side."""
        return self.patch_size * 2 ** (len(self.ch_mult) - 1)

    @property
    def dec_blocks(self) -> int:
        return self.num_res_blocks + 1 if self.decoder_res_blocks is None else self.decoder_res_blocks

    @property
    def tokens_per_image(self) -> int:
        return (self.resolution // self.downsample) ** 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"unknown VQConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # Upstream STAR-VQ exactly: 16x downsampling, 384^2 -> 24x24 = 576 codes, 65,536 x 512 codebook (~1.06 B params).
    "star-vq": dict(ch=256, ch_mult=(1, 2, 2, 4, 8), num_res_blocks=2, decoder_res_blocks=3, attn_heads=8,
                    z_channels=512, codebook_size=65536, code_dim=512, codebook_l2_norm=False, resolution=384),
    # ShapeWorld: 128^2 -> 8x8 = 64 codes, one per 16-px grid cell: a 16x16 space-to-depth stem, then every layer at
    # 8x8 (the full-resolution convolutions cost most and learn slowest on 2 CPU cores; see docs/vq.md).
    # Every cell is encoded on its own (local_encoder): one tile is always one code. The decoder keeps its context
    # (a cell-local decoder drew tiles at ~34 dB against 48.5 dB; docs/vq.md). 2,048 codes, dictionary scenes with
    # every orientation: ShapeGenEval counting kept 0.988 of its scenes, 0.917 with 1,024 codes (docs/vq.md).
    "shapes": dict(patch_size=16, local_encoder=True, local_decoder=False, ch=128, ch_mult=(1,), num_res_blocks=2,
                   decoder_res_blocks=2, attn_heads=4, z_channels=64, norm_groups=32, codebook_size=2048,
                   code_dim=16, codebook_l2_norm=False, resolution=128),
}


def preset(name: str, **overrides: Any) -> VQConfig:
    """The VQConfig of a named preset (`star-vq`, `shapes`), with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown VQ preset {name!r}; choose one of {sorted(PRESETS)}")
    return VQConfig(**{**PRESETS[name], **overrides})


# -----------------------------------------------------------------------------
# Building blocks (names match upstream state-dict keys)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3 -> norm -> swish -> dropout -> conv3x3, plus a 1x1 shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:  # (B, in, H, W) -> (B, out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over all positions, with 1x1-conv q/k/v/proj_out and a residual.

    Head i owns the contiguous channel slice [i*c/heads, (i+1)*c/heads) (the upstream grouping), scale = head_dim^-0.5.
    """

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        b, c, h, w = x.shape
        n = self.norm(x)

        def heads(t: Tensor) -> Tensor:  # (B, C, H, W) -> (B, heads, H*W, C/heads)
            return t.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)

        out = F.scaled_dot_product_attention(heads(self.q(n)), heads(self.k(n)), heads(self.v(n)))
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv3x3 with asymmetric zero padding (right/bottom), halving H and W."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """conv_in -> per level: ResBlocks (+ attention at the lowest level), downsample -> mid (res, attn, res) -> z."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        self.patch, self.cell = cfg.patch_size, cfg.downsample if cfg.local_encoder else 0
        self.conv_in = nn.Conv2d(cfg.in_channels * self.patch ** 2, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.res, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.res.append(ResnetBlock(block_in, cfg.ch * mult, g, cfg.dropout))
                block_in = cfg.ch * mult
                if i == levels - 1:
                    level.attn.append(AttnBlock(block_in, g, cfg.attn_heads))
            if i != levels - 1:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, g, cfg.dropout),
                                  AttnBlock(block_in, g, cfg.attn_heads),
                                  ResnetBlock(block_in, block_in, g, cfg.dropout)])
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, z, H/f, W/f)
        if self.cell:                                                     # every f x f cell is its own image
            b, c, hh, ww = x.shape
            h, w, f = hh // self.cell, ww // self.cell, self.cell
            cells = x.reshape(b, c, h, f, w, f).permute(0, 2, 4, 1, 3, 5).reshape(b * h * w, c, f, f)
            z = self._encode(cells)                                      # (B*h*w, z, 1, 1)
            return z.reshape(b, h, w, -1).permute(0, 3, 1, 2)            # (B, z, h, w)
        return self._encode(x)

    def _encode(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, z, H/f, W/f)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)                          # (B, 3*p*p, H/p, W/p)
        h = self.conv_in(x)
        for level in self.conv_blocks:
            for j, res in enumerate(level.res):
                h = res(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z -> conv_in -> mid (res, attn, res) -> per level from the lowest: ResBlocks (+ attention), upsample -> image."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, g, cfg.dropout),
                                  AttnBlock(block_in, g, cfg.attn_heads),
                                  ResnetBlock(block_in, block_in, g, cfg.dropout)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(levels)):
            level = nn.Module()
            level.res, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.dec_blocks):
                level.res.append(ResnetBlock(block_in, cfg.ch * cfg.ch_mult[i], g, cfg.dropout))
                block_in = cfg.ch * cfg.ch_mult[i]
                if i == levels - 1:
                    level.attn.append(AttnBlock(block_in, g, cfg.attn_heads))
            if i != 0:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = _norm(block_in, g)
        self.patch, self.cell = cfg.patch_size, cfg.downsample if cfg.local_decoder else 0
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels * self.patch ** 2, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # (B, z, h, w) -> (B, 3, h*f, w*f)
        if self.cell:                                                     # every code is its own 1 x 1 image
            b, d, h, w = z.shape
            f = self.cell
            cells = self._decode(z.permute(0, 2, 3, 1).reshape(b * h * w, d, 1, 1))   # (B*h*w, 3, f, f)
            c = cells.shape[1]
            return cells.reshape(b, h, w, c, f, f).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * f, w * f)
        return self._decode(z)

    def _decode(self, z: Tensor) -> Tensor:  # (B, z, h, w) -> (B, 3, h*f, w*f)
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            for j, res in enumerate(level.res):
                h = res(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        out = self.conv_out(F.silu(self.norm_out(h)))                      # (B, 3*p*p, H/p, W/p)
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


# -----------------------------------------------------------------------------
# Quantizer


@torch.no_grad()
def nearest_codes(z: Tensor, codebook: Tensor, *, l2_norm: bool = False, block: int = 1 << 24,
                  code_chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Index and squared distance of the nearest codebook row for every row of `z`, exactly, in bounded memory.

    z: (N, d), codebook: (K, d). Returns (codes (N,) int64, dist (N,) fp32). Distances are ||e||^2 - 2 z.e (+ ||z||^2,
    added at the end), computed in fp32 whatever the input dtype, over blocks of at most `block` elements
    (token chunk x code chunk, code chunk <= `code_chunk`), keeping a running minimum. Ties go to the lowest index,
    as in `argmin`.
    With `l2_norm`, both sides are unit-normalised first (nearest by cosine).
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_codes expects z (N, d) and codebook (K, d), got {tuple(z.shape)} and "
                         f"{tuple(codebook.shape)}")
    n, k = z.shape[0], codebook.shape[0]
    code_chunk = max(1, min(k, code_chunk, block))
    token_chunk = max(1, block // code_chunk)
    codes = torch.empty(n, dtype=torch.long, device=z.device)
    best = torch.empty(n, dtype=torch.float32, device=z.device)
    for t0 in range(0, n, token_chunk):
        zt = z[t0:t0 + token_chunk].float()                               # (n_t, d) fp32
        if l2_norm:
            zt = F.normalize(zt, dim=-1)
        run_min = torch.full((zt.shape[0],), float("inf"), device=z.device)
        run_arg = torch.zeros(zt.shape[0], dtype=torch.long, device=z.device)
        for c0 in range(0, k, code_chunk):
            e = codebook[c0:c0 + code_chunk].float()                      # (k_c, d) fp32, one chunk at a time
            if l2_norm:
                e = F.normalize(e, dim=-1)
            d = torch.addmm(e.pow(2).sum(1)[None], zt, e.t(), alpha=-2.0)  # (n_t, k_c) = ||e||^2 - 2 z.e
            cmin, carg = d.min(dim=1)
            better = cmin < run_min                                        # strict: earlier chunk wins ties
            run_min = torch.where(better, cmin, run_min)
            run_arg = torch.where(better, carg + c0, run_arg)
        codes[t0:t0 + token_chunk] = run_arg
        best[t0:t0 + token_chunk] = run_min + zt.pow(2).sum(1)
    return codes, best


def _entropy_chunk(z: Tensor, codebook: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Soft assignment of a token chunk: (sum of probabilities over tokens (K,), sum of per-token entropies ())."""
    d = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None] - 2 * z @ codebook.t()   # (n_t, K)
    logits = -d / temperature
    probs = logits.softmax(-1)
    return probs.sum(0), -(probs * logits.log_softmax(-1)).sum()


def entropy_loss(z: Tensor, codebook: Tensor, temperature: float, block: int = 1 << 24) -> Tensor:
    """Mean per-token entropy minus entropy of the mean assignment (low = confident and diverse), in token chunks.

    Each chunk is recomputed in the backward pass (activation checkpointing), so memory stays at one chunk of
    (tokens x K) probabilities instead of the full matrix.
    """
    n, k = z.shape[0], codebook.shape[0]
    chunk = max(1, block // k)
    prob_sum = z.new_zeros(k, dtype=torch.float32)
    ent_sum = z.new_zeros((), dtype=torch.float32)
    for t0 in range(0, n, chunk):
        p, e = checkpoint(_entropy_chunk, z[t0:t0 + chunk].float(), codebook.float(), temperature, use_reentrant=False)
        prob_sum, ent_sum = prob_sum + p, ent_sum + e
    avg = prob_sum / n
    return ent_sum / n + (avg * torch.log(avg + 1e-5)).sum()


def _code_ce_chunk(z: Tensor, codebook: Tensor, targets: Tensor) -> Tensor:
    d = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None] - 2 * z @ codebook.t()   # (n_t, K)
    return F.cross_entropy(-d, targets, reduction="sum")


def code_cross_entropy(z: Tensor, codebook: Tensor, targets: Tensor, block: int = 1 << 24) -> Tensor:
    """Mean cross-entropy of picking `targets` (N,) when the logits of z (N, d) are minus its squared distances to
    the codebook (K, d): it pulls each latent towards its target code and away from the others. Computed in token
    chunks of at most `block` distances, each recomputed in the backward pass (memory: one chunk)."""
    n, k = z.shape[0], codebook.shape[0]
    chunk = max(1, block // k)
    total = z.new_zeros((), dtype=torch.float32)
    for t0 in range(0, n, chunk):
        total = total + checkpoint(_code_ce_chunk, z[t0:t0 + chunk].float(), codebook.float(), targets[t0:t0 + chunk],
                                   use_reentrant=False)
    return total / n


@torch.no_grad()
def kmeans_codebook(z: Tensor, k: int, iters: int = 10, *, l2_norm: bool = False,
                    generator: torch.Generator | None = None, block: int = 1 << 24,
                    weights: Tensor | None = None, seeds: int = 0) -> Tensor:
    """k centroids of the rows of z (N, d) by Lloyd's algorithm, seeded k-means++ style -> (k, d) fp32.

    The first `seeds` rows of z are centres that stay where they are (exact dictionary entries); the rest are drawn
    with probability proportional to (weight x) the squared distance to the nearest centre so far, in rounds of k/8
    centres at a time (one chunked distance pass per round), and move by Lloyd's steps. `weights` (N,) counts each
    row that many times (a deduplicated set of points). A centre left without points is re-seeded at the point worst
    served by the current centres. With `l2_norm` the rows and centres are unit vectors (spherical k-means, matching
    a cosine codebook). Deterministic for a given `generator`.
    """
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"kmeans_codebook expects a non-empty (N, d) tensor, got {tuple(z.shape)}")
    if k <= 0 or iters < 0:
        raise ValueError(f"kmeans_codebook needs k > 0 and iters >= 0, got k={k}, iters={iters}")
    if z.shape[0] < k:
        raise ValueError(f"kmeans_codebook needs at least k={k} latents, got {z.shape[0]}; encode more images")
    z = z.float()
    if l2_norm:
        z = F.normalize(z, dim=-1)
    n = z.shape[0]
    w = torch.ones(n, device=z.device) if weights is None else weights.to(z.device, torch.float32)
    if w.shape != (n,) or bool((w <= 0).any()):
        raise ValueError(f"kmeans_codebook weights must be {n} positive numbers, got shape {tuple(w.shape)}")
    seeds = min(max(seeds, 0), k)
    centres = z[:seeds].clone() if seeds else z[torch.randint(0, n, (1,), generator=generator)]   # (s, d)
    dist = nearest_codes(z, centres, block=block)[1].clamp_min(0)
    per_round = max(1, k // 8)
    while centres.shape[0] < k:
        m = min(per_round, k - centres.shape[0])
        chance = (dist * w).double() if float(dist.sum()) > 0 else w.double()
        pick = torch.multinomial(chance, m, replacement=m > int((chance > 0).sum()), generator=generator)
        new = z[pick]
        centres = torch.cat([centres, new])
        dist = torch.minimum(dist, nearest_codes(z, new, block=block)[1].clamp_min(0))
    for _ in range(iters):
        codes, dist = nearest_codes(z, centres, block=block)
        sums = torch.zeros_like(centres).index_add_(0, codes, z * w[:, None])
        counts = torch.bincount(codes, weights=w, minlength=k).float()
        filled, fixed = counts > 0, torch.arange(k, device=centres.device) < seeds
        centres[filled & ~fixed] = sums[filled & ~fixed] / counts[filled & ~fixed, None]
        empty = torch.nonzero(~filled & ~fixed).flatten()
        if empty.numel():                                                # worst-served points become centres
            centres[empty] = z[dist.clamp_min(0).topk(min(empty.numel(), n)).indices[:empty.numel()]]
        if l2_norm:
            centres = F.normalize(centres, dim=-1)
    return centres


@dataclass
class QuantizerOutput:
    z_q: Tensor              # (B, d, h, w) quantized latents with straight-through gradient to z
    codes: Tensor            # (B, h, w) int64
    codebook_loss: Tensor    # () ||sg(z) - e||^2
    commit_loss: Tensor      # () beta * ||z - sg(e)||^2
    entropy_loss: Tensor     # () entropy_loss_ratio * entropy term (0 when off)
    z: Tensor                # (B*h*w, d) the (normalised when l2) latents that were quantized, detached
    errors: Tensor           # (B*h*w,) squared distance of each latent to its code (quantization error), detached
    target_ce: Tensor        # () cross-entropy of choosing the given target codes by distance (0 without targets)


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with codebook/commitment/entropy losses, straight-through gradients and usage counts.

    `usage_counts` (K,) counts how often each code was chosen in training mode since the last `reset_usage()`; it is
    a non-persistent buffer (not part of the weights) that the trainer reads for usage/perplexity logging and
    dead-code restarts.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        self.register_buffer("usage_counts", torch.zeros(cfg.codebook_size, dtype=torch.long), persistent=False)

    def codebook(self) -> Tensor:  # (K, d), unit rows when l2-normalised
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.cfg.codebook_l2_norm else w

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    def forward(self, z: Tensor, bypass: bool = False, targets: Tensor | None = None
                ) -> QuantizerOutput:  # z: (B, d, h, w), targets: (B, h, w)
        """Nearest-code quantization with the straight-through estimator.

        Warm-up modes (star.vq_train): `bypass` hands the (normalised) latents themselves to the decoder (autoencoder
        warm-up); `targets` hands the decoder the rows of given codes instead of the nearest ones and adds
        `target_ce`, the cross-entropy of choosing them by distance (dictionary warm-up). The nearest codes, their
        usage and the codebook/commitment losses are computed in every mode."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)                       # (B*h*w, d)
        if self.cfg.codebook_l2_norm:
            flat = F.normalize(flat, dim=-1)
        codebook = self.codebook()                                         # (K, d)
        codes, dist = nearest_codes(flat.detach(), codebook.detach(), block=self.cfg.search_block)
        e = F.embedding(codes, codebook)                                   # (B*h*w, d), gathers rows only
        zero = flat.new_zeros(())
        if self.training:
            self.usage_counts += torch.bincount(codes, minlength=self.cfg.codebook_size)
        codebook_loss = F.mse_loss(e, flat.detach())
        commit_loss = self.cfg.commit_beta * F.mse_loss(flat, e.detach())
        ent = zero
        if self.training and self.cfg.entropy_loss_ratio > 0:
            ent = self.cfg.entropy_loss_ratio * entropy_loss(flat, codebook, self.cfg.entropy_temperature,
                                                             self.cfg.search_block)
        target_ce = zero
        if targets is not None:
            if targets.shape != (b, h, w):
                raise ValueError(f"targets must be (B, h, w) = {(b, h, w)}, got {tuple(targets.shape)}")
            targets = targets.reshape(-1)
            z_q = F.embedding(targets, codebook)                           # the decoder learns to draw these codes
            target_ce = code_cross_entropy(flat, codebook, targets, self.cfg.search_block)
        elif bypass:
            z_q = flat
        else:
            z_q = flat + (e - flat).detach()                               # straight-through estimator
        z_q = z_q.reshape(b, h, w, d).permute(0, 3, 1, 2)
        return QuantizerOutput(z_q, codes.reshape(b, h, w), codebook_loss, commit_loss, ent, flat.detach(),
                               dist.clamp_min(0), target_ce)


# -----------------------------------------------------------------------------
# The model


@dataclass
class VQOutput:
    recon: Tensor            # (B, 3, H, W) decoded images, unclamped
    codes: Tensor            # (B, h, w) int64
    codebook_loss: Tensor    # ()
    commit_loss: Tensor      # ()
    entropy_loss: Tensor     # ()
    latents: Tensor          # (B*h*w, d) pre-quantization latents (detached), for dead-code restarts
    errors: Tensor           # (B*h*w,) their squared distance to the chosen code
    target_ce: Tensor        # () see QuantizerOutput


class VQModel(nn.Module):
    """Encoder + quantizer + decoder. See the module docstring for the API."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.code_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.code_dim, config.z_channels, 1)
        self.reset_conv_parameters()

    def reset_conv_parameters(self) -> None:
        """Variance-preserving conv init (std = 1/sqrt(fan_in), zero bias). PyTorch's default shrinks the signal by
        ~sqrt(3) per conv, and the image reaches the output through ~13 convs without a residual (resampling, in/out
        and code projections), so a fresh model would start with almost no signal path and a long plateau."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                nn.init.zeros_(module.bias)

    # --- checks -------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError(f"VQModel expects images as a (B, C, H, W) tensor, got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if images.shape[1] != cfg.in_channels:
            raise ValueError(f"VQModel expects {cfg.in_channels}-channel images (B, {cfg.in_channels}, H, W), got "
                             f"{images.shape[1]} channels in shape {tuple(images.shape)}; convert grayscale/RGBA "
                             f"to RGB first (PIL: image.convert('RGB'))")
        f = cfg.downsample
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image size {images.shape[2]}x{images.shape[3]} is not divisible by the tokenizer's "
                             f"downsample factor {f}; resize to a multiple of {f} (e.g. {cfg.resolution})")
        if not images.is_floating_point():
            raise ValueError(f"VQModel expects float images in [-1, 1], got dtype {images.dtype}; "
                             f"use images.float() / 127.5 - 1 for uint8")

    def _check_codes(self, codes: Tensor) -> None:
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.numel():
            low, high = torch.stack(torch.aminmax(codes)).tolist()                  # one host sync
            if low < 0 or high >= self.config.codebook_size:
                raise ValueError(f"codes must lie in [0, {self.config.codebook_size}), got range [{low}, {high}]")

    # --- API ----------------------------------------------------------------
    def encode_latents(self, images: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, d, h, w), before quantization
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float in [-1, 1] -> codes (B, H/f, W/f) int64 in [0, codebook_size)."""
        z = self.encode_latents(images)                                    # (B, d, h, w)
        b, d, h, w = z.shape
        codes, _ = nearest_codes(z.permute(0, 2, 3, 1).reshape(-1, d), self.quantize.codebook(),
                                 l2_norm=self.config.codebook_l2_norm, block=self.config.search_block)
        return codes.reshape(b, h, w)

    def embed(self, codes: Tensor, check: bool = True) -> Tensor:
        """codes (...) int -> code vectors (..., code_dim): rows of the codebook (unit rows with l2 norm). `check`
        refuses codes outside the codebook (a host sync; decoding skips it for codes its own head sampled)."""
        if check:
            self._check_codes(codes)
        return F.embedding(codes.long(), self.quantize.codebook())

    def decode_latents(self, z_q: Tensor) -> Tensor:  # (B, d, h, w) -> (B, 3, H, W)
        return self.decoder(self.post_quant_conv(z_q))

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, h, w), or (B, h*w) for a square grid -> images (B, 3, h*f, w*f), float, unclamped."""
        if codes.ndim == 2:
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"decode got flat codes of length {codes.shape[1]}, which is not a square grid; "
                                 f"pass codes shaped (B, h, w)")
            codes = codes.reshape(codes.shape[0], side, side)
        if codes.ndim != 3:
            raise ValueError(f"decode expects codes (B, h, w) or (B, h*w), got shape {tuple(codes.shape)}")
        vectors = self.embed(codes).permute(0, 3, 1, 2)                    # (B, d, h, w)
        return self.decode_latents(vectors.to(self.post_quant_conv.weight.dtype))

    def forward(self, images: Tensor, bypass: bool = False, targets: Tensor | None = None) -> VQOutput:
        """Training/eval pass: images -> quantize (straight-through) -> reconstruction and the quantizer losses.
        `bypass` / `targets`: the warm-up modes of VectorQuantizer.forward."""
        q = self.quantize(self.encode_latents(images), bypass=bypass, targets=targets)
        return VQOutput(self.decode_latents(q.z_q), q.codes, q.codebook_loss, q.commit_loss, q.entropy_loss, q.z,
                        q.errors, q.target_ce)

    # --- persistence ------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VQModel":
        return cls(preset(name, **overrides))

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write `config.json` and `model.safetensors` (optionally cast to `dtype`) atomically into `directory`."""
        save_folder(directory, self.config, self.state_dict(), dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: torch.dtype = torch.float32) -> "VQModel":
        """Load a `save_pretrained` folder strictly (every key, every shape, finite values)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: a VQ folder holds config.json and model.safetensors "
                                        f"(written by VQModel.save_pretrained or `star train vq`)")
        config = VQConfig.from_dict(json.loads(cfg_path.read_text()))
        with torch.device("meta"):
            model = cls(config)
        state = load_file(str(w_path))
        report = check_state_dict(model, state, source=str(w_path))
        report.raise_if_bad()
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                              strict=True, assign=True)
        model.quantize.usage_counts = torch.zeros(config.codebook_size, dtype=torch.long)
        return model.to(device).eval() if device is not None else model.eval()


def save_folder(directory: str | os.PathLike, config: VQConfig, state: dict[str, Tensor],
                dtype: torch.dtype | None = None) -> None:
    """Write a VQ folder (config.json + model.safetensors) from a config and a full state dict, atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in state.items()}
    _atomic_write(directory / "config.json", json.dumps(config.to_dict(), indent=2).encode())
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    save_file(state, tmp, metadata={"format": "pt", "star": "vq"})
    os.replace(tmp, directory / "model.safetensors")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
# Strict loading with a report, and the upstream converter


@dataclass
class LoadReport:
    """What a state dict had compared with the model: nothing is skipped without appearing here."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)       # "key: checkpoint (..) vs model (..)"
    non_finite: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)          # known upstream training-only keys, dropped on purpose
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.non_finite)

    def __str__(self) -> str:
        lines = [f"load report for {self.source}: {self.loaded} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched", "non_finite", "ignored", "notes"):
            items = getattr(self, name)
            if items:
                shown = ", ".join(items[:8]) + (f", ... (+{len(items) - 8} more)" if len(items) > 8 else "")
                lines.append(f"  {name} ({len(items)}): {shown}")
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        if self.non_finite:
            raise ValueError(f"checkpoint {self.source} holds NaN/Inf values in {self.non_finite[:5]} "
                             f"({len(self.non_finite)} tensors); it is corrupt or from a diverged run\n{self}")
        if not self.ok:
            raise KeyError(f"checkpoint {self.source} does not match the model (strict load)\n{self}")


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str = "<state dict>") -> LoadReport:
    """Compare keys, shapes and finiteness of `state` against `model` without loading anything."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = LoadReport(source=source)
    report.missing = sorted(set(expected) - set(state))
    report.unexpected = sorted(set(state) - set(expected))
    for k in sorted(set(expected) & set(state)):
        if tuple(state[k].shape) != expected[k]:
            report.mismatched.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}")
        elif state[k].is_floating_point() and state[k].device.type != "meta" and not torch.isfinite(state[k]).all():
            report.non_finite.append(k)
        else:
            report.loaded += 1
    return report


# Upstream keys that hold training state only; present in upstream checkpoints, absent from this model on purpose.
UPSTREAM_IGNORED_KEYS = ("quantize.codebook_used",)
UPSTREAM_PREFIXES = ("module.", "pixel_encoder.", "_orig_mod.")


def convert_upstream_state_dict(state: dict[str, Any], report: LoadReport) -> dict[str, Tensor]:
    """Upstream STAR / LlamaGen VQ state dict -> this model's keys (identity up to wrappers), recording every change."""
    for wrapper in ("model", "state_dict", "ema"):
        if wrapper in state and isinstance(state[wrapper], dict) and not torch.is_tensor(state[wrapper]):
            report.notes.append(f"unwrapped checkpoint[{wrapper!r}] (other top-level entries: "
                                f"{sorted(k for k in state if k != wrapper)})")
            state = state[wrapper]
            break
    out: dict[str, Tensor] = {}
    stripped = 0
    for key, value in state.items():
        new = key
        for prefix in UPSTREAM_PREFIXES:
            if new.startswith(prefix):
                new = new[len(prefix):]
        if new != key:
            stripped += 1
            if stripped == 1:
                report.notes.append(f"stripped wrapper prefixes {UPSTREAM_PREFIXES} from keys (e.g. {key} -> {new})")
        if new in UPSTREAM_IGNORED_KEYS:
            report.ignored.append(f"{new} {tuple(value.shape)} (upstream usage window, training-only)")
            continue
        if not torch.is_tensor(value):
            report.unexpected.append(f"{new} (not a tensor: {type(value).__name__})")
            continue
        out[new] = value
    return out


def load_upstream_pt(path: Path, expected: str) -> Any:
    """torch.load of an upstream .pt file (weights only, memory-mapped unless it is a legacy non-zip file); a file
    torch cannot read is a ValueError that names it."""
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:                              # legacy (non-zip) files cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"cannot load {path}: not a readable PyTorch weights file ({type(exc).__name__}); "
                         f"expected {expected}") from exc


def load_upstream_vq(path: str | os.PathLike, config: VQConfig | None = None, strict: bool = True,
                     device: str | torch.device | None = None) -> tuple[VQModel, LoadReport]:
    """Load upstream STAR's `VQ-Model.pt` into the `star-vq` preset (or `config`) with a strict key/shape/NaN check.

    Returns the model and a LoadReport. With strict=True (default) any missing, unexpected, mis-shaped or non-finite
    tensor raises with the full report; with strict=False the matching tensors load and the report says what did not.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream VQ checkpoint {path} not found (expected STAR's VQ-Model.pt)")
    config = config or preset("star-vq")
    state = load_upstream_pt(path, "STAR's VQ-Model.pt")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    report = LoadReport(source=str(path))
    state = convert_upstream_state_dict(state, report)
    with torch.device("meta"):
        model = VQModel(config)
    checked = check_state_dict(model, state, source=str(path))
    for name in ("loaded", "missing", "unexpected", "mismatched", "non_finite"):
        value = getattr(checked, name)
        setattr(report, name, value if name == "loaded" else getattr(report, name) + value)
    if strict:
        report.raise_if_bad()
    if not report.ok:  # non-strict: fill what matched, keep freshly initialised weights elsewhere
        fresh = VQModel(config).state_dict()
        bad = set(report.missing) | {m.split(":")[0] for m in report.mismatched} | set(report.non_finite)
        state = {k: (state[k] if k in state and k not in bad else fresh[k]) for k in fresh}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    model.quantize.usage_counts = torch.zeros(config.codebook_size, dtype=torch.long)
    model.eval()
    return (model.to(device) if device is not None else model), report


def load_vq(spec: str | os.PathLike | None = None, device: str | torch.device | None = None) -> VQModel:
    """Resolve a tokenizer: None -> the shipped ShapeWorld tokenizer; a folder; a preset name (random init); a .pt."""
    if spec is None:
        if not (SHIPPED_SHAPES_DIR / "model.safetensors").is_file():
            raise FileNotFoundError(f"the shipped ShapeWorld tokenizer is missing from {SHIPPED_SHAPES_DIR}; "
                                    f"train one with `star train vq --out DIR` and pass --model DIR/model")
        return VQModel.from_pretrained(SHIPPED_SHAPES_DIR, device=device)
    if str(spec) in PRESETS:
        return VQModel.from_preset(str(spec)).to(device).eval()
    path = Path(spec)
    if path.is_dir():
        return VQModel.from_pretrained(path, device=device)
    if path.is_file() and path.suffix in (".pt", ".pth", ".bin"):
        model, report = load_upstream_vq(path, device=device)
        print(report)
        return model
    raise FileNotFoundError(f"VQ model {spec!r} is neither a preset ({sorted(PRESETS)}), a folder with "
                            f"config.json + model.safetensors, nor an upstream .pt file")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
