"""Can a STAR model draw, from text, the scenes that edits produce but GenEval-style prompts never ask for?

    python scripts/edit_scene_probe.py --model M [--n-varied 60]

white   "a {colour} {shape} on a white background" for 7 classes x 9 colours (extract's targets: one medium object on
        pure white); a hit is a parsed object of that class and colour
varied  captions of scenes from star.shapes.cli_data.varied_record (small / large objects, outlines, turned
        orientations, named backgrounds; seed 0, train split, so a coverage check, not a generalisation test): scenes
        parsed with exactly the caption's objects (class, colour, size band, hollow, orientation) and background, and
        per captioned object whether it is drawn in its class and colour, then in its size band, outline, orientation

Drawn with the model's own T2I sampling (seed = the batch start). Prints hits per suite.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="STAR model folder")
    parser.add_argument("--n-varied", type=int, default=60, help="varied scenes to draw (default 60)")
    parser.add_argument("--batch", type=int, default=21, help="prompts per call")
    args = parser.parse_args()

    from star.pipeline import STARPipeline
    from star.shapes import vocab
    from star.shapes.cli_data import varied_record
    from star.shapes.parse import parse
    from star.shapes.scene import Scene

    pipe = STARPipeline.from_pretrained(args.model)
    resolution = pipe.model.vq.config.resolution

    def draw(prompts: list[str]) -> list:
        images = []
        for start in range(0, len(prompts), args.batch):
            images += pipe.text_to_image(prompts[start:start + args.batch], seed=start).images
        return [parse(image) for image in images]

    pairs = [(c, s) for s in vocab.CLASSES for c in vocab.COLORS if c != "white"]
    graphs = draw([f"a {c} {s} on a white background" for c, s in pairs])
    hits = [any(o.color == c and o.shape == s for o in g.objects) for (c, s), g in zip(pairs, graphs)]
    white = sum(g.background_rgb == (255, 255, 255) for g in graphs)
    print(f"white: {sum(hits)}/{len(pairs)} right class and colour; {white} drawn on pure white", flush=True)

    rng = np.random.default_rng(0)
    records = [varied_record(rng, aligned=True, resolution=resolution) for _ in range(args.n_varied)]
    graphs = draw([r["text"] for r in records])
    exact, named, attrs = 0, 0, collections.Counter()
    for record, graph in zip(records, graphs):
        scene = Scene.from_dict(record["meta"]["scene"])
        want = collections.Counter((o.shape, o.color, o.size_band, o.hollow, o.orientation) for o in scene.objects)
        got = collections.Counter((o.shape, o.color, o.size_band, o.hollow, o.orientation) for o in graph.objects)
        exact += want == got and graph.background == scene.background
        for o in scene.objects:                      # each captioned object: drawn at all, then its other attributes
            drawn = [p for p in graph.objects if (p.shape, p.color) == (o.shape, o.color)]
            named += bool(drawn)
            attrs["size"] += any(p.size_band == o.size_band for p in drawn)
            attrs["outline"] += any(p.hollow == o.hollow for p in drawn)
            attrs["orientation"] += any(p.orientation == o.orientation for p in drawn)
    total = sum(len(r["meta"]["scene"]["objects"]) for r in records)
    print(f"varied: {exact}/{len(records)} scenes drawn exactly as captioned; of {total} objects {named} drawn in "
          f"their class and colour, of which right " + ", ".join(f"{k} {v}" for k, v in attrs.items()))

if __name__ == "__main__":
    main()
