"""star convert-upstream: upstream STAR-{3B,7B}.pt + VQ-Model.pt -> a STAR model folder referencing the base."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="upstream STAR-3B.pt or STAR-7B.pt")
    parser.add_argument("--vq", required=True, help="upstream VQ-Model.pt (converted into OUT/vq) or a VQ folder")
    parser.add_argument("--base", required=True, help="local Qwen2.5-VL-{3B,7B}-Instruct folder (referenced)")
    parser.add_argument("--out", required=True, help="output STAR model folder")
    parser.add_argument("--preset", choices=["star-3b", "star-7b"], default=None,
                        help="check the checkpoint's sizes against this preset (default: infer the sizes)")


def run(args: argparse.Namespace) -> int:
    from star.checkpoint import convert_upstream

    out, report = convert_upstream(args.checkpoint, args.base, args.out, vq=args.vq, preset=args.preset)
    print(report)
    print(f"wrote {out}")
    return 0
