"""Pre-tokenising speed: milliseconds per image of a VQ's encoder at several images per call, and whether the codes
match those of one image per call (what `star tokenize --batch-size` chooses between).

    python scripts/bench_tokenize.py                       # the shipped tokenizer, 256 rendered ShapeWorld scenes
    python scripts/bench_tokenize.py --vq DIR --n 64 --batch-sizes 1 16

Images are rendered in memory (random ShapeWorld scenes at the VQ's resolution); loading and resizing are not timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vq", default=None, help="VQ folder (default: the shipped ShapeWorld tokenizer)")
    p.add_argument("--n", type=int, default=256, help="images")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import numpy as np
    import torch

    from star.shapes.render import render
    from star.shapes.sample import random_scene
    from star.views import vq_pixels
    from star.vq import SHIPPED_SHAPES_DIR, load_vq

    vq = load_vq(str(args.vq or SHIPPED_SHAPES_DIR)).eval()
    side = vq.config.resolution
    rng = np.random.default_rng(args.seed)
    pixels = [vq_pixels(render(random_scene(rng), resolution=side), side) for _ in range(args.n)]   # (3, H, W) each
    reference = None
    print(f"{args.n} scenes at {side} px, torch threads {torch.get_num_threads()}")
    for size in args.batch_sizes:
        start, chunks = time.perf_counter(), []
        with torch.inference_mode():
            for i in range(0, len(pixels), size):
                chunks.append(vq.encode(torch.stack(pixels[i:i + size])))                     # (b, h, w)
        ms = (time.perf_counter() - start) / len(pixels) * 1e3
        codes = torch.cat(chunks)
        reference = codes if reference is None else reference
        same = "identical" if torch.equal(codes, reference) else f"{int((codes != reference).sum())} codes differ"
        print(f"{size:>3} per call: {ms:5.1f} ms/image, codes {same} (against {args.batch_sizes[0]} per call)")


if __name__ == "__main__":
    main()
