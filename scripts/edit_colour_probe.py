"""Does naming each referent's colour in an edit instruction help a STAR model edit? ShapeImgEdit's benchmark items
edited three ways, scored by the exact ShapeImgEdit scorer:

    python scripts/edit_colour_probe.py --model M [--variants given oracle base] [--n 200]

given   the benchmark's instruction ("extract the circle")
oracle  every "the {shape}" that is the source's only object of that shape named by its true colour
        ("extract the blue circle")
base    the same, with the colour the model's frozen base answers to ShapeVQA's "what colour is the {shape}?" about
        the source image (an edit-time use of the base's understanding, as implicit reasoning is for text-to-image)

Prints the overall score (mean of the nine type means, as `star eval shapes`) and the type means per variant, and the
base's colour accuracy on the referents it was asked about. Greedy decoding at CFG 2 (the shipped edit sampling).
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics


def referents(instruction: str) -> list[str]:
    """Shapes the instruction names as "the {shape}" without a colour word before it."""
    from star.shapes import vocab

    return [shape for shape in vocab.CLASSES if re.search(rf"\bthe {shape}\b", instruction)]


def name_colours(instruction: str, colours: dict[str, str]) -> str:
    """"the {shape}" -> "the {colour} {shape}" for each shape in `colours`."""
    for shape, colour in colours.items():
        instruction = re.sub(rf"\bthe {shape}\b", f"the {colour} {shape}", instruction)
    return instruction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="STAR model folder")
    parser.add_argument("--variants", nargs="+", default=["given", "oracle", "base"],
                        choices=["given", "oracle", "base"])
    parser.add_argument("--n", type=int, default=200, help="benchmark items (the first n of the 200)")
    parser.add_argument("--batch", type=int, default=25, help="edits per call")
    args = parser.parse_args()

    from star.pipeline import STARPipeline
    from star.shapes import edits, vocab
    from star.shapes.imgedit import score_item

    pipe = STARPipeline.from_pretrained(args.model)
    items = edits.imgedit_items(200, 0)[:args.n]
    sources = [edits.render_source(item, pipe.model.vq.config.resolution) for item in items]
    truth = [{s: next(o.color for o in item.source.objects if o.shape == s)
              for s in referents(item.instruction) if sum(o.shape == s for o in item.source.objects) == 1}
             for item in items]
    instructions = {"given": [item.instruction for item in items],
                    "oracle": [name_colours(item.instruction, t) for item, t in zip(items, truth)]}
    if "base" in args.variants:
        asked = [(i, s) for i, item in enumerate(items) for s in referents(item.instruction)]
        answers = pipe.understand([sources[i] for i, _ in asked], [f"what colour is the {s}?" for _, s in asked],
                                  max_new_tokens=8)
        said = [dict() for _ in items]
        for (i, s), a in zip(asked, answers):
            if a.strip() in vocab.COLORS:
                said[i][s] = a.strip()
        right = sum(said[i].get(s) == truth[i].get(s) for i, s in asked if s in truth[i])
        print(f"base colour answers: {right} right of {sum(s in truth[i] for i, s in asked)} asked about a unique "
              f"shape ({len(asked)} asked)")
        instructions["base"] = [name_colours(item.instruction, s) for item, s in zip(items, said)]
    for variant in args.variants:
        prompts, scores = instructions[variant], collections.defaultdict(list)
        for start in range(0, len(items), args.batch):
            chunk = slice(start, start + args.batch)
            out = pipe.edit(sources[chunk], prompts[chunk], guidance_scale=2.0, temperature=0.0, seed=start).images
            for item, image in zip(items[chunk], out):
                scores[item.edit_type].append(score_item(item, image)["sample"])
        means = {t: statistics.mean(v) for t, v in scores.items()}
        detail = ", ".join(f"{t} {means[t]:.2f}" for t in edits.EDIT_TYPES if t in means)
        print(f"{variant}: overall {statistics.mean(means.values()):.2f}; {detail}", flush=True)


if __name__ == "__main__":
    main()
