"""`star train stage --stage NAME`: run one training stage (one process, or every rank under torchrun).

The config is the stage's recipe (`stage.default_config()`), overlaid in this order by `--config` (a JSON file or an
inline JSON object), by each `--set key=value` (dotted keys: `optim.lr=1e-4`, `stage_options.hidden=64`), and last
by `--out`, `--steps` and `--resume`. The resolved config is written to OUT/config.json.

    star train stage --stage toy --out runs/toy --steps 200
    torchrun --nproc_per_node 2 -m star.training.cli --stage toy --out runs/toy2 --set parallel=fsdp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from star.training.config import apply_overrides, merge_json, to_dict
from star.training.stages import STAGES, get_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=sorted(STAGES), help="which stage to train")
    parser.add_argument("--config", help="JSON file, or an inline JSON object, overlaid on the stage's recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field")
    parser.add_argument("--out", help="run folder (config.out_dir)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (config.steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def resolve_config(args: argparse.Namespace):
    stage = get_stage(args.stage)
    config = stage.default_config()
    if args.config:
        text = args.config.strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"--config {text}: no such file (pass a JSON file or an inline JSON object)")
            text = path.read_text()
        config = merge_json(config, json.loads(text))
    overrides = list(args.set)
    if args.out is not None:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.resume:
        overrides.append("resume=true")
    return stage, apply_overrides(config, overrides)


def run(args: argparse.Namespace) -> int:
    stage, config = resolve_config(args)
    if args.print_config:
        print(json.dumps({"stage": stage.name, **to_dict(config)}, indent=2))
        return 0
    from star.training.trainer import train

    summary = train(config, stage)
    if summary["rank"] == 0 and summary.get("loss") is not None:
        print(f"done: step {summary['step']}, loss {summary['loss']:.4f}, skipped {summary['skipped']}, "
              f"log {summary['log']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m star.training.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
