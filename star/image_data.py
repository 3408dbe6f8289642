"""Image datasets for the tokenizer: folders of image files, record datasets, and ShapeWorld rendered on the fly.

Every dataset here yields float tensors (3, R, R) in [-1, 1] (the project's image convention) and is map-style, so
`DistributedSampler` shards it across ranks. `open_image_dataset(spec, resolution)` picks the reader from a string:

    "shapeworld"            ShapeWorld scenes rendered on the fly (aligned world, training seed), 1,000,000 indices
    "shapeworld:N:SEED:V:C:E"
                            N scenes from sampler seed SEED (scene i is the same everywhere), a fraction V of them
                            varied (other backgrounds, sizes, hollow; default 0.2), a fraction E edit targets (what
                            ShapeImgEdit asks a model to draw: outlines, objects on pure white, moved and resized
                            objects; default 0), the rest default scenes; C = all (default: every colour-class pair,
                            held-out ones included) or train (the train split only)
    DIR with manifest.json  a star-records dataset (star.data.records; also a single .jsonl shard): its images
    DIR                     every image file under DIR, recursively (png, jpg, jpeg, webp, bmp, gif, tif, tiff)
    FILE.txt                one image path per line (relative paths are relative to the list file)

Preprocessing follows upstream STAR's VQ: RGB, bilinear resize to R x R without keeping the aspect ratio
(`crop="center"` keeps it: resize the short side, then centre-crop), scale to [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHAPEWORLD_TRAIN_SEED = 0
SHAPEWORLD_EVAL_SEED = 2024  # held-out scenes for `star eval vq` (a different seed stream from training)
MAX_CACHED = 50_000  # ShapeWorld pools up to this size keep their renders in memory (about 2.5 GB at 128^2)


def pil_to_tensor(image: Image.Image, resolution: int | None = None,
                  crop: Literal["stretch", "center"] = "stretch") -> Tensor:
    """PIL image -> (3, R, R) float in [-1, 1] (RGB; bilinear resize; `stretch` ignores the aspect ratio)."""
    image = image.convert("RGB")
    if resolution is not None and image.size != (resolution, resolution):
        if crop == "center":
            w, h = image.size
            s = resolution / min(w, h)
            image = image.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)
            w, h = image.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
        else:
            image = image.resize((resolution, resolution), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)                               # (R, R, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def tensor_to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8 (clamped, rounded)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ImageFileDataset(Dataset):
    """A list of image files. Broken files raise with their path instead of being skipped."""

    def __init__(self, paths: list[Path], resolution: int, crop: Literal["stretch", "center"] = "stretch",
                 source: str = ""):
        if not paths:
            raise FileNotFoundError(f"no images found in {source or 'the given list'} "
                                    f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        self.paths, self.resolution, self.crop = paths, resolution, crop

    @classmethod
    def from_folder(cls, root: str | os.PathLike, resolution: int, crop: Literal["stretch", "center"] = "stretch"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        return cls(paths, resolution, crop, source=str(root))

    @classmethod
    def from_list(cls, list_file: str | os.PathLike, resolution: int, crop: Literal["stretch", "center"] = "stretch"):
        list_file = Path(list_file)
        lines = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        paths = [p if p.is_absolute() else list_file.parent / p for p in map(Path, lines)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in {list_file} do not exist, e.g. {missing[:3]}")
        return cls(paths, resolution, crop, source=str(list_file))

    @classmethod
    def from_records(cls, root: str | os.PathLike, resolution: int, crop: Literal["stretch", "center"] = "stretch"):
        """Every distinct image of a star-records dataset (folder with manifest.json, or one .jsonl shard): the
        "image" of t2i/vqa/caption records and the "source"/"target" of edit records (star.data.records)."""
        from star.data.records import KINDS, read_records

        seen: dict[str, None] = {}
        for record in read_records(root, check_images=False):
            for name, typ in KINDS[record["kind"]].items():
                if typ == "image":
                    seen.setdefault(record[name])
        return cls([Path(p) for p in seen], resolution, crop, source=f"records in {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                return pil_to_tensor(image, self.resolution, self.crop)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc


class ShapeWorldDataset(Dataset):
    """ShapeWorld scenes rendered on the fly; index i always gives the same scene (seeded by (seed, i))."""

    def __init__(self, size: int = 1_000_000, resolution: int | None = None, seed: int = SHAPEWORLD_TRAIN_SEED,
                 aligned: bool = True, varied: float = 0.2, combos: str = "all", cache: bool | None = None,
                 edits: float = 0.0):
        from star.shapes import vocab

        if size <= 0:
            raise ValueError(f"ShapeWorldDataset size must be > 0, got {size}")
        if not 0.0 <= varied <= 1.0:
            raise ValueError(f"ShapeWorldDataset varied must be in [0, 1], got {varied}")
        if not 0.0 <= edits <= 1.0 - varied:
            raise ValueError(f"ShapeWorldDataset edits must be in [0, 1 - varied] = [0, {1 - varied:g}], got {edits}")
        if combos not in ("all", "train"):
            raise ValueError(f"ShapeWorldDataset combos must be 'all' or 'train', got {combos!r}")
        self.size, self.seed, self.aligned, self.varied, self.edits = size, seed, aligned, varied, edits
        # A tokenizer must draw every colour-class pair: the held-out split tests what the generator learns to say,
        # not what the codec can draw (the ShapeGenEval ceiling includes held-out prompts). "train" excludes them.
        self.split = "eval" if combos == "all" else "train"
        # Rendering (~35 ms a scene) costs as much CPU as a training step of the small tokenizer, so a finite pool
        # is rendered once per process and kept as uint8 (49 KB a 128^2 image); large pools render every time.
        self.cache: dict[int, Tensor] | None = {} if (size <= MAX_CACHED if cache is None else cache) else None
        self.resolution = resolution or vocab.DEFAULT_RESOLUTION

    def __len__(self) -> int:
        return self.size

    def _edit_item(self, i: int):
        """The edit whose target is image i, or None when i is not an edit target (scene i's first draw u falls in
        [varied, varied + edits)). Edit types are drawn uniformly, so the rare ImgEdit types (extract, style) get their
        share."""
        u = np.random.default_rng([self.seed, i]).random()
        if not self.varied <= u < self.varied + self.edits:
            return None
        from star.shapes.edits import EDIT_TYPES, random_edit

        rng = np.random.default_rng([self.seed, i, 1])
        return random_edit(rng, EDIT_TYPES[int(rng.integers(len(EDIT_TYPES)))], aligned=self.aligned,
                           split=self.split)

    def scene(self, i: int):
        """Scene i. A fraction 1 - `varied` are default scenes (1-4 medium objects on gray: what prompts produce);
        of the varied ones, half are medium objects on a random background and half mix every size band, any
        background, every orientation and some hollow objects (what edits produce). Held-out colour/shape pairs
        appear unless combos is "train"."""
        from dataclasses import replace

        from star.shapes import vocab
        from star.shapes.sample import random_scene
        from star.shapes.scene import Scene

        rng = np.random.default_rng([self.seed, i])
        u = rng.random()
        item = self._edit_item(i)
        if item is not None:  # an extract target renders on pure white, not on its scene's background (image(i))
            return item.target
        if u >= self.varied:
            return random_scene(rng, aligned=self.aligned, split=self.split)
        backgrounds = tuple(vocab.BACKGROUNDS)
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        if u < self.varied / 2:
            return random_scene(rng, aligned=self.aligned, background=background, split=self.split)
        for n in range(int(rng.integers(1, 6)), 0, -1):
            try:
                scene = random_scene(rng, aligned=self.aligned, n_objects=n, background=background,
                                     sizes=tuple(vocab.SIZE_BANDS), split=self.split)
            except ValueError:  # too many large blocks to fit: one object fewer
                continue
            objects = [replace(o, hollow=bool(rng.random() < 0.3),
                               orientation=str(rng.choice(vocab.ORIENTATIONS[o.shape]))) for o in scene.objects]
            return Scene(objects=objects, background=scene.background)
        return random_scene(rng, aligned=self.aligned, split=self.split)

    def image(self, i: int) -> Image.Image:
        from star.shapes.edits import render_target
        from star.shapes.render import render

        item = self._edit_item(i)
        if item is not None:
            return render_target(item, self.resolution)
        return render(self.scene(i), resolution=self.resolution)

    def __getitem__(self, i: int) -> Tensor:
        if self.cache is None:
            return pil_to_tensor(self.image(i))
        if i not in self.cache:
            self.cache[i] = torch.from_numpy(np.asarray(self.image(i), dtype=np.uint8).copy()).permute(2, 0, 1)
        return self.cache[i].float() / 127.5 - 1.0


def shapeworld_kwargs(spec: str, size: int = 1_000_000, seed: int = SHAPEWORLD_TRAIN_SEED) -> dict:
    """ShapeWorldDataset keyword arguments of a 'shapeworld[:N[:SEED[:V[:C[:E]]]]]' spec; empty fields take the
    given size and seed and the dataset's defaults (varied 0.2, combos all, edits 0)."""
    parts = spec.split(":")[1:] + [""] * 5
    try:
        return dict(size=int(parts[0]) if parts[0] else size, seed=int(parts[1]) if parts[1] else seed,
                    varied=float(parts[2]) if parts[2] else 0.2, combos=parts[3] or "all",
                    edits=float(parts[4]) if parts[4] else 0.0)
    except ValueError as exc:
        raise ValueError(f"bad ShapeWorld spec {spec!r}; use shapeworld[:N[:SEED[:VARIED[:all|train[:EDITS]]]]]") \
            from exc


def open_image_dataset(spec: str, resolution: int, crop: Literal["stretch", "center"] = "stretch") -> Dataset:
    """Dataset from a spec string (see the module docstring)."""
    if spec == "shapeworld" or spec.startswith("shapeworld:"):
        return ShapeWorldDataset(resolution=resolution, **shapeworld_kwargs(spec))
    path = Path(spec)
    if (path.is_dir() and (path / "manifest.json").is_file()) or (path.is_file() and path.suffix == ".jsonl"):
        return ImageFileDataset.from_records(path, resolution, crop)
    if path.is_dir():
        return ImageFileDataset.from_folder(path, resolution, crop)
    if path.is_file() and path.suffix == ".txt":
        return ImageFileDataset.from_list(path, resolution, crop)
    raise FileNotFoundError(f"data {spec!r} is not 'shapeworld[:N[:SEED]]', a folder of images, a record dataset "
                            f"(folder with manifest.json, or a .jsonl shard) or a .txt list of image paths")
