"""`star generate / edit / understand / convert-upstream`: thin command-line wrappers over star.pipeline and
star.checkpoint. Each module exposes add_arguments(parser) and run(args) for the table in star/cli.py; the options
they share (model, device, sampling) live here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "star-shapes"
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH", default=None,
                        help=f"STAR model folder (default: the shipped ShapeWorld model, {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="compute dtype (default: bfloat16 on cuda, float32 on cpu)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed; image i uses seed + i")
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)")
    parser.add_argument("--top-k", type=int, default=None, help="top-k filter, 0 = off (default: the model's)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus filter, 1 = off (default: the model's)")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the model's)")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(num_images=args.num_images, seed=args.seed, guidance_scale=args.guidance_scale, top_k=args.top_k,
                top_p=args.top_p, temperature=args.temperature)


def load_pipeline(args: argparse.Namespace, understanding_only: bool = False):
    """The pipeline of --model (or the shipped default), on --device with --dtype. With `understanding_only`, --model
    may also be a base VLM folder (e.g. the understanding stage's export): then a BasePipeline is returned."""
    import json

    import torch

    from star.pipeline import BasePipeline, STARPipeline

    if args.model is None:
        if not (DEFAULT_MODEL / "config.json").is_file():
            raise FileNotFoundError(f"no default model is installed (the ShapeWorld model is expected at "
                                    f"{DEFAULT_MODEL}); pass --model PATH to a STAR model folder (written by "
                                    f"STAR.save_pretrained or `star convert-upstream`)")
        path = DEFAULT_MODEL
    else:
        path = Path(args.model)
        if not path.is_dir():
            raise FileNotFoundError(f"--model {path} is not a folder; pass a STAR model folder (config.json + "
                                    f"model.safetensors)")
    from star.training.parallel import parse_device

    device = parse_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = path / "config.json"
    fields = {}
    if config.is_file():
        try:
            fields = json.loads(config.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config} is not valid JSON ({exc}); a model folder's config.json is written by "
                             f"save_pretrained") from exc
    if isinstance(fields, dict) and "stacks" not in fields and "model_type" in fields:
        if not understanding_only:
            raise ValueError(f"--model {path} is a base model folder (model_type {fields['model_type']!r}), not a "
                             f"STAR model; understanding accepts it, generation and editing need a STAR folder")
        return BasePipeline.from_pretrained(path, device=device, dtype=dtype)
    return STARPipeline.from_pretrained(path, device=device, dtype=dtype)


def check_output(output: str | Path) -> Path:
    """Refuse an --output that cannot be saved as an image, before any model is loaded."""
    from PIL import Image

    output = Path(output)
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; pass an image file, e.g. {output / 'image.png'}")
    if Image.registered_extensions().get(output.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"--output {output} does not end in an image suffix PIL can write "
                         f"({output.suffix or 'no suffix'}); use e.g. .png")
    folder = next(p for p in output.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ValueError(f"--output {output}: {folder} is a file, not a folder")
    return output


def save_images(images: list, output: str | Path) -> list[Path]:
    """One image -> OUTPUT; several -> OUTPUT with _0, _1, ... before the suffix."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = [output] if len(images) == 1 else [output.with_name(f"{output.stem}_{i}{output.suffix}")
                                                for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    return paths
