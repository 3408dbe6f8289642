"""What a base answers in text alone: ShapeWISE reasoning, the facts, and ShapeVQA asked about a caption.

For each base folder, greedy answers to
- every ShapeWISE benchmark prompt (what `star eval shapes --suite wise --reasoning` draws from), against the plain
  prompt that answers it: the text half of implicit reasoning, without the stack;
- every fact question (the text_qa facts the understanding stage teaches);
- the ShapeVQA benchmark questions a caption answers (stage_understanding.SCENE_QA_FAMILIES), asked about the
  scene's caption instead of its image (the understanding stage's scene_qa format): can the language model look
  things up in its context at all?

    python scripts/text_probe.py runs/shapes3/base runs/uX/base [--n 200]

Exact match is strict: "a photo of a red star" against "a photo of a red cross" is wrong although the colour (the
fact) is right, so the probe also reports whether the answer contains the fact's answer word.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def answers(pipe, questions: list[str], batch: int = 50) -> list[str]:
    out: list[str] = []
    for i in range(0, len(questions), batch):
        out += [a.strip() for a in pipe.understand(None, questions[i:i + batch], max_new_tokens=24)]
    return out


def main() -> int:
    from star.eval_shapes import BENCHMARK_SEEDS, build_benchmark
    from star.pipeline import BasePipeline
    from star.shapes.scene import Scene
    from star.shapes.text import caption, wise_answer_prompt, wise_fact_qa, wise_prompts
    from star.training.stage_understanding import SCENE_QA_FAMILIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bases", nargs="+", help="base model folders")
    p.add_argument("--n", type=int, default=200, help="ShapeWISE benchmark prompts (default: the whole benchmark)")
    p.add_argument("--show", type=int, default=5, help="print this many wrong reasoning answers per base")
    args = p.parse_args()
    torch.set_num_threads(1)
    items = wise_prompts(n=args.n)
    facts = wise_fact_qa()
    scene_qa = [(f"{caption(Scene.from_dict(r['scene']))}. {r['question']}", r["answer"], r["family"])
                for r in build_benchmark("vqa", *BENCHMARK_SEEDS["vqa"]) if r["family"] in SCENE_QA_FAMILIES]
    for folder in args.bases:
        pipe = BasePipeline.from_pretrained(folder, device="cpu")
        said = answers(pipe, [it["Prompt"] for it in items])
        exact, has_word = defaultdict(list), defaultdict(list)
        for it, a in zip(items, said):
            kind = it["knowledge"]["kind"]
            exact[kind].append(a == wise_answer_prompt(it))
            has_word[kind].append(it["knowledge"]["answer"] in a.split())
        fact_said = answers(pipe, [f["question"] for f in facts])
        fact_ok = sum(a == f["answer"] for a, f in zip(fact_said, facts)) / len(facts)
        rate = lambda d: sum(map(sum, d.values())) / sum(map(len, d.values()))  # noqa: E731
        print(f"{folder}: reasoning exact {rate(exact):.3f}, contains the fact's answer {rate(has_word):.3f}, "
              f"fact questions {fact_ok:.3f} ({len(facts)}), distinct reasoning answers {len(set(said))}")
        for kind in sorted(exact):
            print(f"  {kind:9s} n={len(exact[kind]):3d} exact {sum(exact[kind]) / len(exact[kind]):.3f} "
                  f"answer word {sum(has_word[kind]) / len(has_word[kind]):.3f}")
        scene_said = answers(pipe, [q for q, _, _ in scene_qa])
        per_family = defaultdict(list)
        for (_, answer, family), a in zip(scene_qa, scene_said):
            per_family[family].append(a == answer)
        print(f"  ShapeVQA about the caption: {rate(per_family):.3f} ({len(scene_qa)} questions; "
              + ", ".join(f"{f} {sum(v) / len(v):.2f}" for f, v in sorted(per_family.items())) + ")")
        wrong = [(it["Prompt"], a, wise_answer_prompt(it)) for it, a in zip(items, said) if a != wise_answer_prompt(it)]
        for prompt, a, target in wrong[: args.show]:
            print(f"    {prompt!r} -> {a!r} (target {target!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
