"""The two views of an input image, shared by inference (star.pipeline) and training (star.training):

    image ─▶ vq_pixels  ─▶ (3, R, R) in [-1, 1] ─▶ vq.encode ─▶ codes     (the VQ view: editing source, T2I targets)
    image ─▶ vit_inputs ─▶ pixel_values, grid_thw ─▶ base ViT            (the ViT view: editing, understanding)

One definition each, so a model is trained on exactly the inputs it will see at inference.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def vq_pixels(image: Image.Image, side: int) -> Tensor:
    """VQ view: bilinear resize to side x side, then [-1, 1]. Returns (3, side, side) float32."""
    array = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1.0


def vit_inputs(image_processor, image: Image.Image, min_tokens: int | None, max_tokens: int | None):
    """ViT view through the base's image processor, optionally with upstream's token budget (min/max merged ViT
    tokens): (pixel_values (P, dim), grid_thw (1, 3), number of ViT tokens in the language model)."""
    ip = image_processor
    unit = ip.patch_size * ip.merge_size
    if min(image.size) < unit:                 # the processor's resize needs at least one merge unit per side
        scale = unit / min(image.size)
        image = image.resize((max(unit, round(image.width * scale)), max(unit, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    get = (lambda k: ip.size.get(k)) if isinstance(ip.size, dict) else (lambda k: getattr(ip.size, k, None))
    size = {k: get(k) for k in ("shortest_edge", "longest_edge") if get(k) is not None}
    if min_tokens is not None:
        size["shortest_edge"] = unit * unit * min_tokens
    if max_tokens is not None:
        size["longest_edge"] = unit * unit * max_tokens
    out = ip(images=[image], size=size, return_tensors="pt")
    grid = out["image_grid_thw"]
    return out["pixel_values"], grid, int(grid.prod()) // (ip.merge_size ** 2)
