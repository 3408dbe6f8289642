"""Codebook-capacity ablation of the `shapes` tokenizer: train at several codebook sizes with equal steps, evaluate
each with `star eval vq`, and write a markdown table (OUT/ablation.md) and the numbers (OUT/ablation.json).

    python scripts/vq_ablation.py --out runs/vq-ablation --sizes 128 512 2048 --steps 1200 --threads 1

Every run is a plain `star train vq` command (printed before it starts) with the same flags except
--codebook-size, so any row can be rerun or resumed by hand. Runs already finished (model/ present and the log at
--steps) are not retrained; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def last_step(run: Path) -> int:
    log = run / "log.jsonl"
    if not log.is_file():
        return 0
    lines = log.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--dict-warmup", type=int, default=600)
    p.add_argument("--eval-n", type=int, default=500, help="held-out scenes for PSNR / SSIM / usage / round trip")
    p.add_argument("--geneval-per-tag", type=int, default=None, help="limit ShapeGenEval prompts per tag")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    out = Path(args.out)
    star = [sys.executable, "-m", "star.cli"]
    rows = []
    for k in args.sizes:
        run = out / f"K{k}"
        train = star + ["train", "vq", "--out", str(run), "--data", "shapeworld:50000", "--codebook-size", str(k),
                        "--steps", str(args.steps), "--batch-size", "16", "--lr", "3e-3", "--warmup", "50",
                        "--dict-warmup", str(args.dict_warmup), "--kmeans-images", "1024", "--restart-every", "25",
                        "--threads", str(args.threads), "--no-progress", "--resume"]
        if last_step(run) < args.steps or not (run / "model" / "model.safetensors").is_file():
            print("+", " ".join(train[2:]), flush=True)
            subprocess.run(train, check=True)
        evaluate = star + ["eval", "vq", "--model", str(run / "model"), "--out", str(run / "eval"),
                           "--n", str(args.eval_n), "--threads", str(args.threads)]
        if args.geneval_per_tag:
            evaluate += ["--geneval-per-tag", str(args.geneval_per_tag)]
        if not (run / "eval" / "summary.json").is_file():
            print("+", " ".join(evaluate[2:]), flush=True)
            subprocess.run(evaluate, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((run / "eval" / "summary.json").read_text())
        geneval = summary.get("geneval") or {}
        rows.append({"codebook_size": k, "steps": args.steps, "psnr": summary["psnr"], "ssim": summary["ssim"],
                     "usage": summary["usage"], "perplexity": summary["perplexity"],
                     "roundtrip": summary["roundtrip"],
                     "geneval_min_ratio": min((v["ratio"] for v in geneval.values()), default=None)})

    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = ["| codes | steps | PSNR (dB) | SSIM | usage | perplexity | scene round trip | min ShapeGenEval ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "—" if r["geneval_min_ratio"] is None else f"{r['geneval_min_ratio']:.3f}"
        table.append(f"| {r['codebook_size']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['usage']:.3f} "
                     f"| {r['perplexity']:.1f} | {r['roundtrip']:.3f} | {ratio} |")
    (out / "ablation.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
