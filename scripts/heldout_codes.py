"""Why held-out edits fail: which VQ codes a benchmark's targets need that no training image ever produced.

The held-out colour-class pairs (star.shapes.sample.HELDOUT_COLOR_SHAPE) never appear in training data, but the
tokenizer was trained on every pair, so a held-out object is drawn with codes of its own. This script counts, over
the training datasets' pre-tokenised codes (`star tokenize`), how often each code occurs; encodes the ground-truth
target of every item of a ShapeImgEdit run; reports the scores per type and held-out flag, and, split by held-out
flag, the unseen codes per target and the mean score of items whose targets need such codes against those whose
targets do not. It then asks whether the code vectors are compositional: a linear probe trained on seen codes'
vectors to tell the colour and the class of the object covering a cell, tested on the unseen codes.

    python scripts/heldout_codes.py --data runs/d23/data/t2i runs/d23/data/edit runs/d23/data/t2i-edits \\
        --eval runs/s23/ship-imgedit [--images GENERATED_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from star.image_data import pil_to_tensor
from star.shapes import vocab
from star.shapes.render import object_mask, render
from star.shapes.sample import heldout_pair, random_scene
from star.shapes.scene import Scene
from star.vq import load_vq


def training_code_counts(folders: list[str], k: int) -> torch.Tensor:
    counts = torch.zeros(k, dtype=torch.long)
    for folder in folders:
        codes = load_file(str(Path(folder) / "codes.safetensors"))["codes"]             # (N, h, w)
        counts += torch.bincount(codes.flatten().long(), minlength=k)
    return counts


def cell_labels(scene: Scene, res: int, grid: int) -> list[tuple[int, str, str]]:
    """(cell index, colour, class) of every cell that one object covers by more than a quarter of its pixels."""
    out = []
    for obj in scene.objects:
        mask = object_mask(obj, res)                                                      # (S, S), S >= res
        cell = mask.shape[0] // grid
        m = mask.reshape(grid, cell, grid, cell).mean(axis=(1, 3))                        # (grid, grid) coverage
        for r, c in zip(*np.nonzero(m > 0.25)):
            out.append((int(r * grid + c), obj.color, obj.shape))
    return out


def encode(vq, images: list[Scene | Path], res: int, batch: int = 32) -> torch.Tensor:
    """Scenes (rendered) or image files (read) -> their VQ codes (n, cells), encoded `batch` at a time."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([pil_to_tensor(render(im, res) if isinstance(im, Scene) else Image.open(im), res)
                         for im in images[i:i + batch]])                                 # (b, 3, res, res)
        out.append(vq.encode(x).flatten(1))                                              # (b, cells)
    return torch.cat(out)


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 500) -> torch.nn.Linear:
    probe = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    return probe


def imgedit_split(eval_dir: Path, vq, seen: torch.Tensor, res: int) -> None:
    """Scores of a ShapeImgEdit run per type and split by held-out flag and by whether the target needs an unseen
    code; how many unseen codes the model's outputs hold (re-encoded), and how many sit where the target needs one."""
    items = {j["key"]: j for j in map(json.loads, open(eval_dir / "items.jsonl"))}
    results = [json.loads(line) for line in open(eval_dir / "scores" / "results.jsonl")]
    by_type = defaultdict(lambda: {False: [], True: []})
    for r in results:
        by_type[r["edit_type"]][items[r["key"]]["heldout"]].append(r["sample"])
    print("| split (items) | " + " | ".join(by_type) + " |\n|---|" + "---|" * len(by_type))
    for held in (False, True):
        cells = [f"{np.mean(v[held]):.2f} ({len(v[held])})" if v[held] else "-" for v in by_type.values()]
        print(f"| {'held-out' if held else 'in-distribution'} | " + " | ".join(cells) + " |")
    targets = [Scene.from_dict(items[r["key"]]["target"]) for r in results]
    codes = encode(vq, targets, res)
    unseen = ~seen[codes]                                                                 # (items, cells)
    rows = defaultdict(list)
    for r, u in zip(results, unseen):
        rows[(items[r["key"]]["heldout"], bool(u.any()))].append((r["sample"], int(u.sum())))
    print("\n| items | n | mean unseen codes per target | mean score |\n|---|---|---|---|")
    for held in (False, True):
        for any_unseen in (False, True):
            v = rows[(held, any_unseen)]
            if v:
                name = f"{'held-out' if held else 'in-distribution'}, target {'needs' if any_unseen else 'needs no'}"
                print(f"| {name} unseen code | {len(v)} | {np.mean([u for _, u in v]):.2f} "
                      f"| {np.mean([s for s, _ in v]):.2f} |")
    out_codes = encode(vq, [eval_dir / "images" / f"{r['key']}.png" for r in results], res)
    print(f"unseen codes in the targets: {int(unseen.sum())}; in the model's outputs (re-encoded): "
          f"{int((~seen[out_codes]).sum())}, at the cells where the target needs one: "
          f"{int((out_codes == codes)[unseen].sum())} equal to the target's code")


def code_probe(vq, seen: torch.Tensor, res: int, n_scenes: int) -> None:
    """Are code vectors compositional? Label each code by the object over its cell, in scenes with every colour-class
    pair, and probe colour and class linearly from the code vector: trained on seen codes, tested on unseen ones."""
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng, split="eval", sizes=tuple(vocab.CELLS_PER_SIZE)) for _ in range(n_scenes)]
    grid = vocab.GRID
    labels: dict[int, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for scene, row in zip(scenes, encode(vq, scenes, res, batch=64)):
        for cell, colour, shape in cell_labels(scene, res, grid):
            labels[int(row[cell])][(colour, shape)] += 1
    code_ids = sorted(labels)
    top = [max(labels[c].items(), key=lambda kv: kv[1])[0] for c in code_ids]
    colours, shapes = sorted({c for c, _ in top}), sorted({s for _, s in top})
    x = vq.embed(torch.tensor(code_ids)).detach().float()                                # (codes, code_dim)
    yc = torch.tensor([colours.index(c) for c, _ in top])
    ys = torch.tensor([shapes.index(s) for _, s in top])
    train = seen[torch.tensor(code_ids)]
    if train.all():
        print("\nevery object code occurs in training: nothing to probe")
        return
    held = torch.tensor([heldout_pair(c, s) for c, s in top])
    print(f"\nobject codes labelled: {len(code_ids)}; unseen in training: {int((~train).sum())} "
          f"(of which labelled with a held-out pair: {int((~train & held).sum())}); seen but labelled held-out: "
          f"{int((train & held).sum())}")
    for name, y, n in (("colour", yc, len(colours)), ("class", ys, len(shapes))):
        probe = linear_probe(x[train], y[train], n)
        with torch.no_grad():
            acc_seen = (probe(x[train]).argmax(-1) == y[train]).float().mean().item()
            acc_unseen = (probe(x[~train]).argmax(-1) == y[~train]).float().mean().item()
        print(f"linear probe of the code vector, {name}: seen codes {acc_seen:.3f}, unseen codes {acc_unseen:.3f} "
              f"(chance {1 / n:.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="tokenised training datasets (codes.safetensors)")
    p.add_argument("--eval", help="a `star eval shapes --suite imgedit` output folder")
    p.add_argument("--images", nargs="*", default=[], help="folders of generated images (searched recursively, "
                   "grid.png left out): how many of their codes, re-encoded, never occur in training")
    p.add_argument("--vq", default="star/assets/star-shapes/vq")
    p.add_argument("--probe-scenes", type=int, default=3000, help="eval-split scenes that label codes for the probe "
                   "(0: no probe)")
    args = p.parse_args()
    torch.manual_seed(0)
    vq = load_vq(args.vq, device="cpu").eval()
    k, res = vq.config.codebook_size, 128
    counts = training_code_counts(args.data, k)
    seen = counts > 0
    print(f"training codes: {int(counts.sum()):,} cells, {int(seen.sum())} of {k} codes occur")
    if args.eval:
        imgedit_split(Path(args.eval), vq, seen, res)
    for folder in args.images:
        paths = sorted(p for p in Path(folder).rglob("*.png") if p.name != "grid.png")
        codes = encode(vq, paths, res)
        print(f"{folder}: {len(paths)} images, {int((~seen[codes]).sum())} unseen codes in "
              f"{int((~seen[codes]).any(1).sum())} of them")
    if args.probe_scenes:
        code_probe(vq, seen, res, args.probe_scenes)


if __name__ == "__main__":
    main()
