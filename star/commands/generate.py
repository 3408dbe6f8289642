"""star generate PROMPT -o OUT.png: text-to-image (optionally with implicit reasoning)."""

from __future__ import annotations

import argparse

from star.commands import (add_model_arguments, add_sampling_arguments, check_output, load_pipeline,
                           sampling_kwargs, save_images)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("-o", "--output", required=True, help="output PNG (several images: OUT_0.png, OUT_1.png, ...)")
    parser.add_argument("--reasoning", action="store_true",
                        help="implicit reasoning: the base answers the prompt first and the answer is drawn")
    add_model_arguments(parser)
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_output(args.output)
    pipe = load_pipeline(args)
    out = pipe.text_to_image(args.prompt, reasoning=args.reasoning, **sampling_kwargs(args))
    if out.answers is not None:
        print(f"answer: {out.answers[0]}")
    for path in save_images(out.images, args.output):
        print(path)
    return 0
