"""ShapeImgEdit of two controls that make no edit: every source returned unchanged, or an unrelated random scene.

    python scripts/imgedit_copy_baseline.py --out runs/imgedit-copy [--unrelated]

A model whose edits only copy their source scores the first; ShapeImgEdit's 1-5 scale rates the change asked for, so
a perfect copy gets the minimum. `--unrelated` answers each item with a random scene (seeded by the item): it neither
edits nor keeps the scene, and should get the minimum too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class CopyPipeline:
    """Answers `edit(image, prompt)` with the source image(s)."""

    resolution = 128

    def edit(self, image, prompt, **sampling):
        prompts = prompt if isinstance(prompt, list) else [prompt]
        images = image if isinstance(image, list) else [image] * len(prompts)
        return SimpleNamespace(images=[im.copy() for im in images])


class UnrelatedPipeline:
    """Answers `edit(image, prompt)` with a random scene, seeded by the instruction and the source's pixels."""

    resolution = 128

    def edit(self, image, prompt, **sampling):
        import zlib

        import numpy as np

        from star.shapes.render import render
        from star.shapes.sample import random_scene

        prompts = prompt if isinstance(prompt, list) else [prompt]
        images = image if isinstance(image, list) else [image] * len(prompts)
        seeds = [zlib.crc32(p.encode() + im.tobytes()) for p, im in zip(prompts, images)]
        return SimpleNamespace(images=[render(random_scene(np.random.default_rng(s)), self.resolution)
                                       for s in seeds])


def main() -> int:
    from star.eval_shapes import EvalConfig, evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--unrelated", action="store_true", help="answer with unrelated random scenes")
    args = p.parse_args()
    pipe = UnrelatedPipeline() if args.unrelated else CopyPipeline()
    summary = evaluate(pipe, EvalConfig(suite="imgedit", out=Path(args.out)))
    what = "unrelated random scenes" if args.unrelated else "unchanged sources"
    print(f"ShapeImgEdit of {what}: {summary['overall']:.2f}; " +
          ", ".join(f"{k} {v:.2f}" for k, v in summary["tasks"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
