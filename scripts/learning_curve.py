"""Learning curve of a generation (or editing) run: ShapeGenEval of every snapshot against training minutes.

    python scripts/learning_curve.py --run runs/shapes/generation --out runs/shapes/curve --limit 25 --watch

The run must have been trained with `snapshot_every` (the `shapes` recipe snapshots every 200 steps): each
RUN/snapshots/step_N/ and the final RUN/export/ is scored with `star eval shapes --suite geneval --model FOLDER
--out OUT/step_N --limit L --images-per-prompt K` (printed before it starts; resumable). Training minutes at step N
are the summed step times from RUN/log.jsonl (batch_size / samples_per_s per step: compute only, no checkpointing or
evaluation, and correct across resumes; a step over 10x the median, a suspended process, counts as the median).
With --watch the script waits for new snapshots until the export appears, so it can run beside the training on the
other core. Writes OUT/curve.json, OUT/curve.md and OUT/curve.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def training_minutes(run: Path) -> tuple[dict[int, float], list[int]]:
    """(step -> minutes of training up to and including it, suspended steps); the last record of a step wins after a
    resume, and a step over 10x the median (SIGSTOP, a laptop lid) counts as the median."""
    config = json.loads((run / "config.json").read_text())
    per_step: dict[int, float] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        per_step[r["step"]] = config["batch_size"] / r["samples_per_s"]
    median = sorted(per_step.values())[len(per_step) // 2] if per_step else 0.0
    paused = sorted(s for s, t in per_step.items() if t > 10 * median)
    total, out = 0.0, {}
    for step in sorted(per_step):
        total += median if step in paused else per_step[step]
        out[step] = total / 60
    return out, paused


def points(run: Path) -> list[tuple[int, Path]]:
    """(step, model folder) of every finished snapshot and of the export, in step order."""
    found = [(int(p.name.split("_")[1]), p) for p in (run / "snapshots").glob("step_*") if not p.name.endswith(".tmp")]
    if (run / "export" / "config.json").is_file():
        steps = json.loads((run / "config.json").read_text())["steps"]
        found.append((steps, run / "export"))
    return sorted(found)


def write_curve(rows: list[dict], out: Path) -> None:
    (out / "curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    tags = list(rows[0]["tasks"]) if rows else []
    lines = ["| step | minutes | overall | held-out | " + " | ".join(tags) + " |",
             "|---" * (4 + len(tags)) + "|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['minutes']:.1f} | {r['overall']:.3f} | {r['heldout']:.3f} | "
                     + " | ".join(f"{r['tasks'][t]:.2f}" for t in tags) + " |")
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [r["minutes"] for r in rows]
    ax.plot(minutes, [r["overall"] for r in rows], "o-", lw=2, label="overall")
    ax.plot(minutes, [r["heldout"] for r in rows], "s--", label="held-out split")
    for t in tags:
        ax.plot(minutes, [r["tasks"][t] for r in rows], lw=0.8, alpha=0.7, label=t)
    ax.set(xlabel="training minutes (generation stage)", ylabel="ShapeGenEval", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the stage's run folder (with snapshots/, log.jsonl, config.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=25, help="prompts per GenEval tag (default 25)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--top-k", type=int, default=None, help="sampling override (default: the model's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling override (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG override (default: the model's)")
    p.add_argument("--watch", action="store_true", help="wait for new snapshots until RUN/export appears")
    p.add_argument("--poll", type=float, default=60.0, help="seconds between looks for new snapshots (--watch)")
    args = p.parse_args()

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict] = {}
    while True:
        for step, folder in points(run):
            if step in rows:
                continue
            dest = out / f"step_{step:08d}"
            if not (dest / "summary.json").is_file():
                cmd = [sys.executable, "-m", "star.cli", "eval", "shapes", "--suite", "geneval", "--model",
                       str(folder), "--out", str(dest), "--limit", str(args.limit), "--images-per-prompt",
                       str(args.images_per_prompt), "--quiet"]
                for flag in ("top_k", "temperature", "guidance_scale"):
                    if getattr(args, flag) is not None:
                        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            summary = json.loads((dest / "summary.json").read_text())
            rows[step] = {"step": step, "minutes": training_minutes(run)[0][step], "overall": summary["overall"],
                          "heldout": summary["heldout"]["overall"], "tasks": summary["tasks"],
                          "model": str(folder)}
            write_curve([rows[s] for s in sorted(rows)], out)
            print(f"step {step}: {rows[step]['minutes']:.1f} min, overall {rows[step]['overall']:.3f}", flush=True)
        if not args.watch or (run / "export" / "config.json").is_file() and all(s in rows for s, _ in points(run)):
            break
        time.sleep(args.poll)
    paused = training_minutes(run)[1]
    if paused:
        print(f"steps {paused} took over 10x the median step time (a suspended process): each counted as the median")
    print(f"wrote {out / 'curve.md'}, curve.json, curve.png ({len(rows)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
