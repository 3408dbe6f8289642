"""Package a finished `shapes` recipe run as the shipped default model (star/assets/star-shapes).

    python scripts/ship_model.py --run runs/shapes [--out star/assets/star-shapes] [--top-k K --temperature T
                                 --guidance-scale S] [--edit-top-k K --edit-temperature T --edit-guidance-scale S]

Writes, atomically (temp folder + rename):

    OUT/config.json            the run's OUT/model config with base = "base" and vq = "vq"
    OUT/model.safetensors      stack, adapter, head (fp16; loaded back in the caller's dtype)
    OUT/base/                  the understanding stage's base folder (weights fp16, tokenizer, processor, template)
    OUT/vq/                    the run's tokenizer (config, weights fp16): the one the model's codes come from
    OUT/training/              provenance: recipe.json, shipped.json (what this script changed), and per stage
                               config.json, DONE, loss.png, log.jsonl.gz

The sampling options replace the recipe's default sampling in the shipped config (recorded in shipped.json); the
--edit-* options set the model's `edit_sampling` (the defaults of `star edit`), starting from that sampling.

The model carries its own tokenizer, so shipping a newer default tokenizer (star/assets/vq-shapes) never changes
what an older shipped model draws. Every figure reported for the shipped model must be measured on OUT itself (fp16
storage).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]

def half(src: Path, dst: Path) -> None:
    """Copy a safetensors file with its floating tensors stored as fp16 (ints kept)."""
    state = load_file(str(src))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(dst),
              metadata={"format": "pt"})


def build(run: Path, tmp: Path, sampling: dict, edit_sampling: dict) -> None:
    model = run / "model"
    config = json.loads((model / "config.json").read_text())
    new = {**config["sampling"], **sampling}
    new_edit = {**new, **edit_sampling} if edit_sampling else config.get("edit_sampling")
    shipped = {"from": str(run.resolve()), "base": [config["base"], "base"], "vq": [config["vq"], "vq"],
               "sampling": [dict(config["sampling"]), new],
               "edit_sampling": [config.get("edit_sampling"), new_edit]}
    config.update(base="base", vq="vq", sampling=new, edit_sampling=new_edit)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    half(model / "model.safetensors", tmp / "model.safetensors")
    shutil.copytree(run / "base", tmp / "base", ignore=shutil.ignore_patterns("model.safetensors"))
    half(run / "base" / "model.safetensors", tmp / "base" / "model.safetensors")
    (tmp / "vq").mkdir()
    shutil.copy2(run / "vq" / "config.json", tmp / "vq" / "config.json")
    half(run / "vq" / "model.safetensors", tmp / "vq" / "model.safetensors")
    prov = tmp / "training"
    prov.mkdir()
    shutil.copy2(run / "recipe.json", prov / "recipe.json")
    (prov / "shipped.json").write_text(json.dumps(shipped, indent=2) + "\n")
    for stage in [e["name"] for e in json.loads((run / "recipe.json").read_text())["stages"]]:
        src, dst = run / stage, prov / stage
        if not (src / "DONE").is_file():
            continue                              # e.g. the vq stage when the shipped tokenizer was used
        dst.mkdir()
        for name in ("config.json", "DONE", "loss.png"):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        with open(src / "log.jsonl", "rb") as f, gzip.open(dst / "log.jsonl.gz", "wb") as g:
            shutil.copyfileobj(f, g)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished `star train --recipe shapes` output folder")
    p.add_argument("--out", default=str(REPO / "star" / "assets" / "star-shapes"))
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--edit-top-k", type=int, default=None)
    p.add_argument("--edit-temperature", type=float, default=None)
    p.add_argument("--edit-guidance-scale", type=float, default=None)
    args = p.parse_args()
    sampling, edit_sampling = (
        {k: getattr(args, prefix + k) for k in ("top_k", "temperature", "guidance_scale")
         if getattr(args, prefix + k) is not None} for prefix in ("", "edit_"))
    run, out = Path(args.run), Path(args.out)
    for need in ("model/config.json", "base/config.json", "vq/model.safetensors", "editing/DONE"):
        if not (run / need).exists():
            raise SystemExit(f"{run} is not a finished shapes run: {run / need} is missing")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(run, tmp, sampling, edit_sampling)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"shipped {run} -> {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
