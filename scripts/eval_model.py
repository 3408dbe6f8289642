"""Every ShapeWorld benchmark of a STAR model in one go, plus the frozen-base check across a recipe's stages.

    python scripts/eval_model.py --out runs/shapes/eval                       # the shipped default model
    python scripts/eval_model.py --model runs/shapes/model --out DIR --stages runs/shapes

Runs (each a plain `star eval shapes` command, printed first; finished suites are kept, so a rerun resumes):
geneval (4 images per prompt), imgedit, vqa, wise, wise --reasoning. With --stages RUN it also answers ShapeVQA with
RUN/base (the base before the generation stage), RUN/generation/export (after it) and RUN/model (after editing) and
checks that the three answer files are identical. Writes OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SUITES = [("geneval", []), ("imgedit", []), ("vqa", []), ("wise", []), ("wise-reasoning", ["--reasoning"])]


def run_suite(name: str, suite: str, model: str | None, out: Path, extra: list[str]) -> dict:
    dest = out / name
    if not (dest / "summary.json").is_file():
        cmd = [sys.executable, "-m", "star.cli", "eval", "shapes", "--suite", suite, "--out", str(dest), "--quiet",
               *(["--model", model] if model else []), *extra]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((dest / "summary.json").read_text())


def answers(summary_dir: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (summary_dir / "answers.jsonl").read_text().splitlines() if line.strip()]
    return sorted((str(r["id"]), r["prediction"]) for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="STAR model folder (default: the shipped model)")
    p.add_argument("--out", required=True)
    p.add_argument("--stages", default=None, help="a `star train --recipe` output folder: check the frozen base")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    for name, extra in SUITES:
        s = run_suite(name, name.split("-")[0], args.model, out, extra)
        results[name] = {"overall": s["overall"], "tasks": s["tasks"],
                         "in_distribution": s["in_distribution"]["overall"], "heldout": s["heldout"]["overall"]}
    lines = ["| suite | overall | in-distribution | held-out | per task |", "|---|---|---|---|---|"]
    for name, r in results.items():
        tasks = ", ".join(f"{t} {v:.3f}" for t, v in r["tasks"].items() if v is not None)
        fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(r['overall'])} | {fmt(r['in_distribution'])} | {fmt(r['heldout'])} | {tasks} |")

    if args.stages:
        run = Path(args.stages)
        stages = {"before generation (base)": ("vqa-stage-base", run / "base"),
                  "after generation": ("vqa-stage-generation", run / "generation" / "export"),
                  "after editing": ("vqa-stage-editing", run / "model")}
        found = {}
        for label, (tag, folder) in stages.items():
            run_suite(tag, "vqa", str(folder), out, [])
            found[label] = answers(out / tag)
        first = next(iter(found.values()))
        same = all(a == first for a in found.values())
        results["frozen_base_vqa_identical"] = same
        results["frozen_base_vqa_answers"] = len(first)
        lines += ["", f"ShapeVQA answers of {', '.join(stages)}: "
                      f"{'identical' if same else 'DIFFERENT'} ({len(first)} answers each)"]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if results.get("frozen_base_vqa_identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
