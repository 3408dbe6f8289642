"""star edit IMAGE INSTRUCTION -o OUT.png: instruction-based image editing."""

from __future__ import annotations

import argparse

from star.commands import (add_model_arguments, add_sampling_arguments, check_output, load_pipeline,
                           sampling_kwargs, save_images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="source image file (RGB)")
    parser.add_argument("instruction", help="the edit to make")
    parser.add_argument("-o", "--output", required=True, help="output PNG (several images: OUT_0.png, OUT_1.png, ...)")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--guidance-after-change", type=float, default=None,
                        help="CFG scale once the edit departs from the source image (default: the model's; "
                             "the --guidance-scale value keeps one scale throughout)")


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    pipe = load_pipeline(args)
    out = pipe.edit(args.image, args.instruction, **sampling_kwargs(args),
                    guidance_after_change=args.guidance_after_change)
    for path in save_images(out.images, args.output):
        print(path)
    return 0
