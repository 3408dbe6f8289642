"""Does a base answer ShapeWISE knowledge prompts? The text half of implicit reasoning, without the stack.

For each base folder: the greedy answer to every ShapeWISE benchmark prompt (what `star eval shapes --suite wise
--reasoning` draws from) compared with the plain prompt that answers it, and the greedy answer to every fact
question (the text_qa facts the understanding stage teaches). Prints exact-match rates overall and per knowledge kind.

    python scripts/reasoning_probe.py runs/shapes3/base runs/uX/base [--n 200]

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
    from star.pipeline import BasePipeline
    from star.shapes.text import wise_answer_prompt, wise_fact_qa, wise_prompts

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bases", nargs="+", help="base model folders")
    p.add_argument("--n", type=int, default=200, help="ShapeWISE benchmark prompts (default: the whole benchmark)")
    p.add_argument("--show", type=int, default=5, help="print this many wrong reasoning answers per base")
    args = p.parse_args()
    torch.set_num_threads(1)
    items = wise_prompts(n=args.n)
    facts = wise_fact_qa()
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
        wrong = [(it["Prompt"], a, wise_answer_prompt(it)) for it, a in zip(items, said) if a != wise_answer_prompt(it)]
        for prompt, a, target in wrong[: args.show]:
            print(f"    {prompt!r} -> {a!r} (target {target!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
