"""star understand IMAGE QUESTION: answer a question about an image with the frozen base (--model: a STAR model
folder, or a base folder on its own)."""

from __future__ import annotations

import argparse

from star.commands import add_model_arguments, load_pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (RGB)")
    parser.add_argument("question", help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    parser.add_argument("--seed", type=int, default=None, help="seed (used when --temperature > 0)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k filter when sampling, 0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus filter when sampling, 1 = off")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args, understanding_only=True)       # a STAR model or a bare base folder
    answer = pipe.understand(args.image, args.question, max_new_tokens=args.max_new_tokens, seed=args.seed,
                             top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)[0]
    print(answer)
    return 0
