"""`star` command line: a table from subcommand to the module that defines it.

Each entry names a module exposing `add_arguments(parser)` and `run(args) -> int | None`; modules are imported
only when their command runs, so `star --help` stays fast and a broken optional part never blocks the rest.
The longest command path that prefixes the arguments wins (`star train vq ...` before `star train ...`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command path, module, one-line help). A two-word path ("shapes render") makes a nested command.
COMMANDS: list[tuple[str, str, str]] = [
    ("shapes render", "star.shapes.cli_render", "render a ShapeWorld scene (demo, JSON spec or random) to PNG"),
    ("generate", "star.commands.generate", "generate an image from a text prompt"),
    ("edit", "star.commands.edit", "edit an image following a text instruction"),
    ("understand", "star.commands.understand", "answer a question about an image (the frozen base)"),
    ("convert-upstream", "star.commands.convert_upstream", "convert the upstream STAR release into a STAR folder"),
    ("shapes prompts", "star.shapes.cli_prompts", "print or write a ShapeWorld benchmark prompt set (JSONL)"),
    ("shapes dataset", "star.shapes.cli_data", "write a ShapeWorld training dataset (star-records format)"),
    ("shapes score", "star.shapes.cli_score", "score images with the exact ShapeWorld judges (geneval, imgedit, vqa)"),
    ("train", "star.training.cli", "train a stage (STAGE: understanding, vq, generation, editing) or a recipe"),
    ("tokenize", "star.training.tokenize", "pre-tokenise a dataset's images into VQ codes (codes.safetensors)"),
    ("eval vq", "star.vq_eval", "tokenizer metrics: PSNR, SSIM, codebook usage/perplexity, ShapeWorld round trip"),
    ("eval shapes", "star.eval_shapes", "generate with a STAR model and score it on ShapeWorld benchmarks"),
]


def _overview() -> str:
    width = max(len(path) for path, _, _ in COMMANDS)
    lines = [f"  star {path:<{width}}  {help_text}" for path, _, help_text in COMMANDS]
    return "usage: star COMMAND [options]   (star COMMAND --help for its options)\n\ncommands:\n" + "\n".join(lines)


def find_command(argv: list[str]) -> tuple[str, str] | None:
    """The (path, module) whose words start `argv`, preferring the longest path."""
    best = None
    for path, module, _ in COMMANDS:
        words = path.split()
        if argv[: len(words)] == words and (best is None or len(words) > len(best[0].split())):
            best = (path, module)
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    found = find_command(argv)
    if found is None:
        print(_overview(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    path, module_name = found
    module = importlib.import_module(module_name)
    help_text = next(h for p, _, h in COMMANDS if p == path)
    parser = argparse.ArgumentParser(prog=f"star {path}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[len(path.split()):])
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError, KeyError) as exc:  # user errors (bad values, paths): one clear line, no traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc   # str(KeyError) adds quotes
        print(f"star {path}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
