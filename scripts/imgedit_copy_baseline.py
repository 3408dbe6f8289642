"""ShapeImgEdit of a pipeline that returns every source image unchanged: the score of "no edit at all".

    python scripts/imgedit_copy_baseline.py --out runs/imgedit-copy

A model whose edits only copy their source scores this; ShapeImgEdit's 1-5 scale rates the change asked for, so a
perfect copy gets the minimum.
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


def main() -> int:
    from star.eval_shapes import EvalConfig, evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    summary = evaluate(CopyPipeline(), EvalConfig(suite="imgedit", out=Path(args.out)))
    print(f"ShapeImgEdit of unchanged sources: {summary['overall']:.2f}; " +
          ", ".join(f"{k} {v:.2f}" for k, v in summary["tasks"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
