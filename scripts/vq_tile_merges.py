"""Which pixel-different ShapeWorld tiles does a tokenizer give the same code (why round trips fail), and which equal
tiles does it give different codes (context in the codes: what makes them harder to predict than the scene)?

    python scripts/vq_tile_merges.py [--model star/assets/vq-shapes] [--show 10]

Renders every medium object (class × orientation × colour) alone on the default background at three grid positions,
encodes it, and records the code of each of its four 16-px quadrant tiles. A code is *merged* when it holds two tiles
whose pixels differ by more than --tolerance (0–255) somewhere: the decoder can draw only one of them. A tile is
*split* when it gets more than one code across the positions, and the background line counts the distinct codes of
plain background cells in all those renders (1 for a tokenizer whose codes depend on the cell alone).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="VQ folder (default: the shipped shapes tokenizer)")
    p.add_argument("--tolerance", type=int, default=24)
    p.add_argument("--show", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)

    from star.shapes import vocab
    from star.shapes.render import render
    from star.shapes.scene import Obj, Scene
    from star.views import vq_pixels
    from star.vq import SHIPPED_SHAPES_DIR, VQModel

    vq = VQModel.from_pretrained(args.model or SHIPPED_SHAPES_DIR).eval()
    cell = 128 // 8
    tiles: dict[tuple, np.ndarray] = {}
    owners: dict[int, set] = collections.defaultdict(set)
    codes_of: dict[tuple, set] = collections.defaultdict(set)
    background: collections.Counter = collections.Counter()
    for shape in vocab.CLASSES:
        for orient in vocab.ORIENTATIONS[shape]:
            for color in vocab.COLORS:
                for cx, cy in ((0.25, 0.25), (0.5, 0.625), (0.625, 0.375)):
                    obj = Obj(shape=shape, color=color, cx=cx, cy=cy, size=0.225, orientation=orient)
                    image = render(Scene(objects=[obj]), 128)
                    with torch.no_grad():
                        codes = vq.encode(vq_pixels(image, 128)[None])[0]                   # (8, 8)
                    pixels = np.asarray(image).astype(np.int16)
                    x0, y0 = round(cx * 8 - 1), round(cy * 8 - 1)
                    for (r, c), code in np.ndenumerate(codes.numpy()):
                        if not (y0 <= r <= y0 + 1 and x0 <= c <= x0 + 1):
                            background[int(code)] += 1
                    for qy in range(2):
                        for qx in range(2):
                            key = (shape, orient, color, qy, qx)
                            y, x = (y0 + qy) * cell, (x0 + qx) * cell
                            tiles[key] = pixels[y:y + cell, x:x + cell]
                            owners[int(codes[y0 + qy, x0 + qx])].add(key)
                            codes_of[key].add(int(codes[y0 + qy, x0 + qx]))

    def spread(keys) -> int:
        keys = sorted(keys)
        return max(int(np.abs(tiles[a] - tiles[b]).max()) for a in keys for b in keys)

    merged = {c: keys for c, keys in owners.items() if len(keys) > 1 and spread(keys) > args.tolerance}
    print(f"{len(tiles)} tiles (class, orientation, colour, quadrant) -> {len(owners)} codes; "
          f"{len(merged)} codes hold pixel-different tiles (max difference > {args.tolerance})")
    for code, keys in sorted(merged.items(), key=lambda kv: -len(kv[1]))[: args.show]:
        names = ", ".join("/".join(map(str, k)) for k in sorted(keys))
        print(f"  code {code} (max difference {spread(keys)}): {names}")
    split = sum(len(c) > 1 for c in codes_of.values())
    print(f"{split} of {len(tiles)} tiles get more than one code across 3 positions; plain background cells get "
          f"{len(background)} distinct codes (most common: {background.most_common(4)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
