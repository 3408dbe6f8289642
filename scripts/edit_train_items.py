"""Score a STAR model's edits on edit records of a dataset (e.g. its own training edits), per type, as ShapeImgEdit.

    python scripts/edit_train_items.py --model M --data runs/b17/data/edit [--per-type 22] [--guidance-after-change S]

Takes the first --per-type records of each edit type after a seeded shuffle of the dataset's `kind: edit` records
(star-records with `meta.source_scene`, `meta.target_scene`, `meta.details`, as `star shapes dataset --kind edit`
writes them), renders each source as the benchmark does, edits it greedily at CFG --guidance-scale (the benchmark's
decoding unless told otherwise) and scores it with the exact ShapeImgEdit scorer. Prints the overall (mean of type
scores) and the per-type scores as one JSON line. Training items against the benchmark's tell memorising from
underfitting, and give a second item set on which to choose decoding settings without tuning on the benchmark.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="STAR model folder")
    p.add_argument("--data", required=True, help="dataset folder with shard-*.jsonl edit records")
    p.add_argument("--per-type", type=int, default=22, help="records per edit type (default 22)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--guidance-after-change", type=float, default=None,
                   help="CFG scale once an edit departs from the source (default: the model's)")
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    if args.per_type < 1:
        raise SystemExit("--per-type must be >= 1")

    from star.pipeline import STARPipeline
    from star.shapes.edits import EditItem, render_source
    from star.shapes.imgedit import score_item, summarize
    from star.shapes.scene import Scene

    shards = sorted(Path(args.data).glob("shard-*.jsonl"))
    if not shards:
        raise SystemExit(f"no shard-*.jsonl in {args.data}")
    records = [json.loads(line) for f in shards for line in f.read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("kind") == "edit"]
    random.Random(args.seed).shuffle(records)
    by_type = collections.defaultdict(list)
    for r in records:
        if len(by_type[r["edit_type"]]) < args.per_type:
            by_type[r["edit_type"]].append(r)
    items = [EditItem(source=Scene.from_dict(r["meta"]["source_scene"]), instruction=r["text"],
                      target=Scene.from_dict(r["meta"]["target_scene"]), edit_type=r["edit_type"],
                      details=r["meta"]["details"]) for t in sorted(by_type) for r in by_type[t]]

    pipe = STARPipeline.from_pretrained(args.model)
    resolution = pipe.model.vq.config.resolution
    results = []
    for start in range(0, len(items), args.batch):
        batch = items[start:start + args.batch]
        out = pipe.edit([render_source(i, resolution) for i in batch], [i.instruction for i in batch],
                        guidance_scale=args.guidance_scale, temperature=args.temperature,
                        guidance_after_change=args.guidance_after_change)
        results += [score_item(i, im, str(start + k)) for k, (i, im) in enumerate(zip(batch, out.images))]
    summary = summarize(results, [False] * len(results))
    print(json.dumps({"overall": round(summary["overall"], 3), "n": len(results), "types": summary["types"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
