"""`star` command line: a table from subcommand to the module that defines it.

Each entry names a module exposing `add_arguments(parser)` and `run(args) -> int | None`; modules are imported
only when their subcommand runs, so `star --help` stays fast and a broken optional part never blocks the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command path, module, one-line help). A two-word path ("shapes render") makes a nested subcommand.
COMMANDS: list[tuple[str, str, str]] = [
    ("shapes render", "star.shapes.cli_render", "render a ShapeWorld scene (demo, JSON spec or random) to PNG"),
    ("generate", "star.commands.generate", "generate an image from a text prompt"),
    ("edit", "star.commands.edit", "edit an image following a text instruction"),
    ("understand", "star.commands.understand", "answer a question about an image (the frozen base)"),
    ("convert-upstream", "star.commands.convert_upstream", "convert the upstream STAR release into a STAR folder"),
    ("shapes prompts", "star.shapes.cli_prompts", "print or write a ShapeWorld benchmark prompt set (JSONL)"),
    ("shapes dataset", "star.shapes.cli_data", "write a ShapeWorld training dataset (star-records format)"),
    ("shapes score", "star.shapes.cli_score", "score images with the exact ShapeWorld judges (geneval, imgedit, vqa)"),
    ("train stage", "star.training.cli", "train a stage (--stage NAME; one process or under torchrun)"),
    ("train vq", "star.vq_train", "train the image tokenizer (VQ) on ShapeWorld or an image folder"),
    ("eval vq", "star.vq_eval", "tokenizer metrics: PSNR, SSIM, codebook usage/perplexity, ShapeWorld round trip"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="star", description="STAR: understand, generate and edit images.")
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups[""] = top
    for path, module, help_text in COMMANDS:
        words = path.split()
        for depth in range(1, len(words)):
            prefix = " ".join(words[:depth])
            if prefix not in groups:
                sub = groups[" ".join(words[: depth - 1])].add_parser(words[depth - 1], help=f"{prefix} commands")
                groups[prefix] = sub.add_subparsers(dest=f"command_{depth}", metavar="COMMAND")
        leaf = groups[" ".join(words[:-1])].add_parser(words[-1], help=help_text, description=help_text)
        leaf.set_defaults(_module=module)
        leaf.set_defaults(_lazy_args=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # First pass finds the subcommand; its module then adds its own arguments and we parse again.
    known, _ = parser.parse_known_args(argv)
    module_name = getattr(known, "_module", None)
    if module_name is None:
        parser.print_help()
        return 2
    module = importlib.import_module(module_name)
    words = [w for path, mod, _ in COMMANDS if mod == module_name for w in path.split()]
    sub = argparse.ArgumentParser(prog="star " + " ".join(words), description=module.__doc__)
    module.add_arguments(sub)
    args = sub.parse_args(argv[len(words):])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # user errors: one clear line, no traceback
        print(f"star {' '.join(words)}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
