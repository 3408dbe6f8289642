"""Does a (tiny) base look at the image? Two diagnostics for the understanding stage.

    python scripts/understanding_probe.py --base runs/shapes/base --data runs/shapes/data/understanding

1. Linear probe of the ViT: the base's merged ViT tokens (what the language model receives) of --images ShapeVQA
   images, one token per ShapeWorld cell at the `shapes` recipe's 16-px patches, against the cell's contents from the
   record's scene (object class or background; object colour or background). A logistic-regression probe is trained
   on 5/6 of the images and scored on the rest, over all cells and over the cells an object covers.
2. Image reliance: the understanding loss on ShapeVQA conversations with their own images and with the images
   rotated across the batch. Equal losses mean the language model ignores the image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cell_labels(scene: dict, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(class, colour) per cell, 0 = background, from a ShapeWorld scene dict (objects on the aligned grid)."""
    from star.shapes import vocab

    colors = list(vocab.COLORS)
    cls, col = np.zeros((grid, grid), int), np.zeros((grid, grid), int)
    lo, hi = vocab.SIZE_BOUNDARIES
    for o in scene["objects"]:
        n = vocab.CELLS_PER_SIZE["small" if o["size"] < lo else "medium" if o["size"] < hi else "large"]
        x0, y0 = round(o["cx"] * grid - n / 2), round(o["cy"] * grid - n / 2)
        cls[y0:y0 + n, x0:x0 + n] = vocab.CLASSES.index(o["shape"]) + 1
        col[y0:y0 + n, x0:x0 + n] = colors.index(o["color"]) + 1
    return cls.reshape(-1), col.reshape(-1)


def probe(features: torch.Tensor, labels: torch.Tensor, train: int) -> tuple[float, float]:
    """Accuracy of a linear probe trained on the first `train` rows: (all cells, object cells)."""
    x = (features - features[:train].mean(0)) / (features[:train].std(0) + 1e-6)
    lin = torch.nn.Linear(x.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[:train]), labels[:train]).backward()
        opt.step()
    with torch.no_grad():
        right = (lin(x[train:]).argmax(-1) == labels[train:]).float()
    return right.mean().item(), right[labels[train:] > 0].mean().item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base folder (e.g. OUT/base-init or OUT/base of a shapes run)")
    p.add_argument("--data", required=True, help="a star-records dataset with vqa records (meta.scene)")
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--batches", type=int, default=3, help="batches of 32 conversations for the reliance test")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoImageProcessor

    from star.base import get_family
    from star.data.records import RecordReader, load_image
    from star.training.config import TrainConfig, from_dict
    from star.training.stage_understanding import UnderstandingStage
    from star.views import vit_inputs

    model_type = json.loads((Path(args.base) / "config.json").read_text())["model_type"]
    hf = get_family(model_type).model_class().from_pretrained(args.base, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(args.base)
    seen, feats, classes, colours = set(), [], [], []
    for rec in RecordReader(args.data):
        if rec["kind"] != "vqa" or rec["image"] in seen:
            continue
        seen.add(rec["image"])
        pixels, grid_thw, n = vit_inputs(processor, load_image(rec["image"]), None, None)
        side = int(n ** 0.5)
        with torch.no_grad():
            feats.append(hf.model.get_image_features(pixels, grid_thw).pooler_output[0])     # (cells, D)
        cls, col = cell_labels(rec["meta"]["scene"], side)
        classes.append(torch.from_numpy(cls))
        colours.append(torch.from_numpy(col))
        if len(feats) == args.images:
            break
    x = torch.cat(feats)
    train = len(feats) * 5 // 6 * feats[0].shape[0]
    for name, y in (("class", torch.cat(classes)), ("colour", torch.cat(colours))):
        every, objects = probe(x, y, train)
        print(f"ViT probe, {name}: {every:.3f} of all cells, {objects:.3f} of object cells ({len(feats)} images)")

    stage = UnderstandingStage()
    config = from_dict(TrainConfig, {"out_dir": str(Path(args.base) / "probe-tmp"), "steps": 1, "batch_size": 32,
                                     "stage_options": {"base": args.base, "data": [args.data],
                                                       "tasks": {"vqa": 1.0}, "check_images": False}})
    model = stage.build(config, torch.device("cpu"), torch.float32).eval()
    stream = stage.batches(config, 0, 1, 0)
    own, rotated = [], []
    with torch.no_grad():
        for _ in range(args.batches):
            part = next(p for p in next(stream).parts if p.pixel_values is not None)     # the rows with an image
            per = int(part.image_grid_thw[0].prod())
            moved = part.pixel_values.view(-1, per, part.pixel_values.shape[-1]).roll(1, 0)
            other = dataclasses.replace(part, pixel_values=moved.reshape(part.pixel_values.shape))
            own.append(model([part])[0].item())
            rotated.append(model([other])[0].item())
    print(f"answer loss with own images {np.mean(own):.4f}, with another conversation's images {np.mean(rotated):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
