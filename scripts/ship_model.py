"""Package a finished `shapes` recipe run as the shipped default model (star/assets/star-shapes).

    python scripts/ship_model.py --run runs/shapes [--out star/assets/star-shapes] [--top-k K --temperature T
                                 --guidance-scale S] [--edit-top-k K --edit-temperature T --edit-guidance-scale S
                                 --edit-guidance-after-change S]
    python scripts/ship_model.py --continued RUN --name NAME --from star/assets/star-shapes --out DIR

--continued: RUN is a stage run that continued the shipped folder --from (`star train editing ... --set
stage_options.init=FROM`, or init = the export of FROM's last continuation, with FROM/base and FROM/vq as its base
and tokenizer). Its export's weights and config replace FROM's; base/, vq/ and training/ are kept, RUN's config,
loss.png and log go to training/NAME, and training/shipped.json lists the continuation.

Writes, atomically (temp folder + rename):

    OUT/config.json            the run's OUT/model config with base = "base" and vq = "vq"
    OUT/model.safetensors      stack, adapter, head (fp16; loaded back in the caller's dtype)
    OUT/base/                  the understanding stage's base folder (weights fp16, tokenizer, processor, template)
    OUT/vq/                    the run's tokenizer (config, weights fp16): the one the model's codes come from
    OUT/training/              provenance: recipe.json, shipped.json (what this script changed), and per stage
                               config.json, DONE, loss.png, log.jsonl.gz

The sampling options replace the recipe's default sampling in the shipped config (recorded in shipped.json); the
--edit-* options override the model's `edit_sampling` (the defaults of `star edit`; a model without one starts from
that sampling).

The model carries its own tokenizer, so shipping a newer default tokenizer (star/assets/vq-shapes) never changes
what an older shipped model draws. Every figure reported for the shipped model must be measured on OUT itself (fp16
storage).
"""

from __future__ import annotations

import argparse
import gzip
import json
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


def resampled(config: dict, sampling: dict, edit_sampling: dict) -> tuple[dict, dict | None]:
    """(sampling, edit_sampling) of a model config with the command line's overrides applied."""
    new = {**config["sampling"], **sampling}
    return new, ({**(config.get("edit_sampling") or new), **edit_sampling} if edit_sampling
                 else config.get("edit_sampling"))


def gzip_log(run: Path, dst: Path) -> None:
    """run/log.jsonl -> dst/log.jsonl.gz."""
    with open(run / "log.jsonl", "rb") as f, gzip.open(dst / "log.jsonl.gz", "wb") as g:
        shutil.copyfileobj(f, g)


def build(run: Path, tmp: Path, sampling: dict, edit_sampling: dict) -> None:
    model = run / "model"
    config = json.loads((model / "config.json").read_text())
    new, new_edit = resampled(config, sampling, edit_sampling)
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
        gzip_log(src, dst)


def build_continued(run: Path, shipped: Path, tmp: Path, name: str, sampling: dict, edit_sampling: dict) -> None:
    opts = json.loads((run / "config.json").read_text())["stage_options"]
    record = json.loads((shipped / "training" / "shipped.json").read_text())
    last = [shipped] + [Path(c["from"]) / "export" for c in record.get("continued", [])[-1:]]
    for key, wants in (("init", last), ("base", [shipped / "base"]), ("vq", [shipped / "vq"])):
        if Path(opts.get(key) or "").resolve() not in [w.resolve() for w in wants]:
            raise SystemExit(f"{run} did not continue {shipped}: its stage_options.{key} is {opts.get(key)!r}, "
                             f"not {' or '.join(map(str, wants))}")
    if (shipped / "training" / name).exists():
        raise SystemExit(f"{shipped}/training/{name} exists; pick another --name")
    config = json.loads((run / "export" / "config.json").read_text())
    new, new_edit = resampled(config, sampling, edit_sampling)
    config.update(base="base", vq="vq", sampling=new, edit_sampling=new_edit)
    top = shipped.resolve()
    shutil.copytree(shipped, tmp, ignore=lambda folder, names: (  # all but the weights and config it replaces
        {"model.safetensors", "config.json"} & set(names) if Path(folder).resolve() == top else set()))
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    half(run / "export" / "model.safetensors", tmp / "model.safetensors")
    dst = tmp / "training" / name
    dst.mkdir()
    for file in ("config.json", "loss.png"):
        if (run / file).is_file():
            shutil.copy2(run / file, dst / file)
    gzip_log(run, dst)
    record.setdefault("continued", []).append({"name": name, "from": str(run.resolve()), "sampling": new,
                                               "edit_sampling": new_edit})
    (tmp / "training" / "shipped.json").write_text(json.dumps(record, indent=2) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="a finished `star train --recipe shapes` output folder")
    what.add_argument("--continued", help="a stage run continued from the shipped folder --from")
    p.add_argument("--name", help="with --continued: its folder under training/")
    p.add_argument("--from", dest="shipped", default=str(REPO / "star" / "assets" / "star-shapes"),
                   help="with --continued: the shipped folder it continued (default: the shipped model)")
    p.add_argument("--out", default=str(REPO / "star" / "assets" / "star-shapes"))
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--edit-top-k", type=int, default=None)
    p.add_argument("--edit-temperature", type=float, default=None)
    p.add_argument("--edit-guidance-scale", type=float, default=None)
    p.add_argument("--edit-guidance-after-change", type=float, default=None)
    args = p.parse_args()
    sampling, edit_sampling = (
        {k: getattr(args, prefix + k, None) for k in ("top_k", "temperature", "guidance_scale", "guidance_after_change")
         if getattr(args, prefix + k, None) is not None} for prefix in ("", "edit_"))
    run, out = Path(args.run or args.continued), Path(args.out)
    needs = ("export/config.json", "export/model.safetensors", "config.json", "log.jsonl") if args.continued else (
        "model/config.json", "base/config.json", "vq/model.safetensors", "editing/DONE")
    for need in needs:
        if not (run / need).exists():
            raise SystemExit(f"{run} is not a finished {'stage' if args.continued else 'shapes'} run: "
                             f"{run / need} is missing")
    if args.continued and not args.name:
        raise SystemExit("--continued needs --name (its folder under training/)")
    from star.io import recover_dir, replace_dir

    recover_dir(out)                    # a swap killed mid-way left the shipped folder as OUT.old: put it back first
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.continued:
        build_continued(run, Path(args.shipped), tmp, args.name, sampling, edit_sampling)
    else:
        build(run, tmp, sampling, edit_sampling)
    replace_dir(tmp, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"shipped {run} -> {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
