"""Where does a STAR edit model go wrong? Teacher-forced code accuracy on ShapeImgEdit items, per edit type, split into
the cells an edit keeps (target code = source code) and the cells it changes; "of which objects" are the kept cells
whose code is not the source's most common one (its backdrop); "first changed cell" is the share of items whose
first changed cell in raster order is right (free-running decoding must start the edit there).

    python scripts/edit_probe.py --model runs/shapes/model [--split train|eval] [--n 200] [--seed 7]

Items are `star.shapes.edits.imgedit_items` of the split (ImgEdit's type proportions; "eval" is the benchmark's
split, with its held-out combinations); conditions are built by the pipeline, as `star edit` builds them, and the
targets are the exact renders encoded by the model's own tokenizer. No prompt dropout, no sampling: a cell counts
as right when the argmax code given the true prefix is the target's code. Comparing the two splits separates
"does not generalise" (train high, eval low) from "has not learnt the edit" (both low).

`--free` samples the codes instead (the model's edit sampling, or --guidance-scale / --temperature) and counts a
cell as right when the sampled code is the target's: the gap to the teacher-forced numbers is what free-running
decoding loses (one wrong code changes every later prefix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="STAR model folder (default: the shipped model)")
    p.add_argument("--split", choices=("train", "eval"), default="eval")
    p.add_argument("--n", type=int, default=200, help="items (default 200)")
    p.add_argument("--seed", type=int, default=7, help="item seed (default 7; the benchmark uses 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--free", action="store_true", help="sample the codes instead of teacher forcing")
    p.add_argument("--guidance-scale", type=float, default=None, help="--free: CFG scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None, help="--free: temperature (default: the model's)")
    args = p.parse_args()

    import torch

    from star.commands import DEFAULT_MODEL
    from star.model import STAR
    from star.pipeline import STARPipeline
    from star.shapes.edits import imgedit_items, render_target
    from star.shapes.render import render

    model = STAR.from_pretrained(args.model or DEFAULT_MODEL).eval()
    pipe = STARPipeline(model)
    res = model.vq.config.resolution
    items = imgedit_items(args.n, seed=args.seed, split=args.split)
    counts: dict[str, list[int]] = {}                      # type: [kept right, kept, changed right, changed]
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        cond = pipe.edit_condition([render(it.source, res) for it in chunk], [it.instruction for it in chunk])
        with torch.no_grad():
            target = pipe._encode_vq([render_target(it, res) for it in chunk])                  # (b, N)
            if args.free:
                predicted = pipe._generate(cond, "edit", args.guidance_scale, None, None, args.temperature,
                                           args.seed + start, None)                               # (b, N)
            else:
                predicted = model(cond, target, drop_prompt=torch.zeros(len(chunk), dtype=torch.bool)).logits.argmax(-1)
        right = predicted == target                                                              # (b, N)
        source = cond.source_codes.view(len(chunk), -1)                                          # (b, N)
        kept = target == source
        ground = source == source.mode(dim=1).values[:, None]           # the source's most common code: backdrop
        for item, r, k, g in zip(chunk, right, kept, ground):
            c = counts.setdefault(item.edit_type, [0] * 8)
            o = k & ~g                                                  # kept cells that show an object
            first = (~k).int().argmax()                                 # the first cell the edit changes
            for i, n in enumerate((r[k].sum(), k.sum(), r[~k].sum(), (~k).sum(), r[o].sum(), o.sum(),
                                   r[first] & ~k[first], (~k).any())):
                c[i] += int(n)
    total = [sum(c[i] for c in counts.values()) for i in range(8)]
    mode = "free-running" if args.free else "teacher-forced"
    print(f"model {args.model or DEFAULT_MODEL}, split {args.split}, {len(items)} items (seed {args.seed}), {mode}")
    print("| edit type | kept cells: accuracy (cells) | of which objects | changed cells | first changed cell "
          "(items) |\n|---|---|---|---|---|")
    share = lambda right, n: f"{right / n:.3f} ({n})" if n else "- (0)"  # noqa: E731
    for name, c in sorted(counts.items()) + [("all", total)]:
        print(f"| {name} | {share(c[0], c[1])} | {share(c[4], c[5])} | {share(c[2], c[3])} | {share(c[6], c[7])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
