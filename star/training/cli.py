"""`star train`: run one training stage, or a whole recipe.

    star train STAGE [--data DIR ...] [--out DIR] [--steps N] [--resume] [--set KEY=VALUE ...] [--config JSON]
                     [--time-budget MIN]
    star train --recipe NAME --out DIR [--resume] [--set STAGE.KEY=VALUE ...] [--time-budget MIN] [--dry-run]
    star train --list

STAGE is a name of the registry (star/training/stages.py): understanding, vq, generation, editing, toy. The config
is the stage's recipe (`stage.default_config()`), overlaid in this order by `--config` (a JSON file or an inline JSON
object), by each `--set key=value` (dotted keys: `optim.lr=1e-4`, `stage_options.stack_layers=4`), and last by
`--data` (= stage_options.data), `--out`, `--steps`, `--resume` and `--time-budget` (= time_budget_s / 60). The
resolved config is written to OUT/config.json.

`star train vq` also accepts the flags of the tokenizer's own trainer (star.vq_train: --batch-size, --lr, --preset,
--model-config, --perceptual-weight, ...); given any of them, or resuming a folder that trainer wrote
(OUT/checkpoint.pt), the run goes to star.vq_train (its loop has dead-code restarts, perceptual and adversarial
losses) and `--set` means what it means there (VQConfig fields). Otherwise the vq stage runs on the generic trainer.

    star train generation --data data/t2i --out runs/gen --set stage_options.base=runs/shapes/base --steps 500
    star train --recipe shapes --out runs/shapes            # everything, end to end (resumable with --resume)
    star train --recipe shapes --out runs/shapes --time-budget 150   # on a slower machine: fewer steps, in time
    torchrun --nproc_per_node 8 -m star.training.cli generation --config gen.json --out /shared/runs/gen
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from star.training.config import apply_overrides, merge_json, to_dict
from star.training.stages import STAGES, get_stage

# Options of star.vq_train's own CLI that `star train` itself does not have (their presence routes `vq` there).
_SHARED_WITH_VQ_TRAIN = {"out", "data", "steps", "resume", "set"}


def _vq_train_parser() -> argparse.ArgumentParser:
    from star import vq_train

    parser = argparse.ArgumentParser(prog="star train vq", add_help=False)
    vq_train.add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", nargs="?", choices=sorted(STAGES), metavar="STAGE",
                        help=f"the stage to train: {', '.join(sorted(STAGES))}")
    parser.add_argument("--stage", dest="stage_flag", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help="run a whole recipe instead (shapes, shapes-quick, star-3b, star-7b)")
    parser.add_argument("--only", action="append", default=None, metavar="STAGE",
                        help="with --recipe: run only these stages (repeatable); the others are left for later")
    parser.add_argument("--data", action="append", default=None, metavar="DIR",
                        help="dataset folder(s) of the stage (stage_options.data); repeat for several")
    parser.add_argument("--config", help="JSON file, or an inline JSON object, overlaid on the stage's recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (recipes: STAGE.KEY=VALUE, data.NAME.KIND=N, base.FIELD=V)")
    parser.add_argument("--out", help="run folder (config.out_dir; a recipe's OUT)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (config.steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("--time-budget", type=float, default=0.0, metavar="MIN",
                        help="minutes this run may take: a stage (or a recipe's stages, shared by their reference "
                             "minutes) shortens its steps to fit, after timing its first steps (0 = no limit)")
    parser.add_argument("--dry-run", action="store_true",
                        help="recipes: write OUT/configs/<stage>.json and print the per-stage commands")
    parser.add_argument("--list", action="store_true", help="list the stages and recipes")
    vq_group = parser.add_argument_group("tokenizer trainer options (`star train vq` only; see star.vq_train)")
    for action in _vq_train_parser()._actions:
        if action.dest in _SHARED_WITH_VQ_TRAIN or isinstance(action, argparse._HelpAction):
            continue
        kwargs = dict(dest=f"vq_{action.dest}", default=argparse.SUPPRESS, help=action.help)
        if isinstance(action, argparse._StoreTrueAction):
            vq_group.add_argument(*action.option_strings, action="store_true", **kwargs)
        elif isinstance(action, argparse._AppendAction):
            vq_group.add_argument(*action.option_strings, action="append", type=action.type,
                                  metavar=action.metavar or action.dest.upper(), **kwargs)
        else:
            vq_group.add_argument(*action.option_strings, type=action.type, choices=action.choices,
                                  metavar=action.metavar or (None if action.choices else action.dest.upper()), **kwargs)


def _vq_train_flags(args: argparse.Namespace) -> dict:
    return {k[3:]: v for k, v in vars(args).items() if k.startswith("vq_")}


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
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {args.config}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"--config {args.config}: expected a JSON object of config fields, got "
                             f"{type(data).__name__}")
        data.pop("stage", None)                       # a run's OUT/config.json records its stage name too
        config = merge_json(config, data)
    overrides = list(args.set)
    if args.data:
        value = args.data[0] if len(args.data) == 1 else args.data
        overrides.append(f"stage_options.data={json.dumps(value)}")
    if args.out is not None:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.resume:
        overrides.append("resume=true")
    if args.time_budget:
        overrides.append(f"time_budget_s={60 * args.time_budget}")
    return stage, apply_overrides(config, overrides)


def _run_vq_train(args: argparse.Namespace, flags: dict) -> int:
    """`star train vq` with star.vq_train's flags: build that trainer's namespace and hand over."""
    from star import vq_train

    if not args.out:
        raise ValueError("star train vq: --out is required")
    ns = _vq_train_parser().parse_args(["--out", args.out])   # its defaults
    for key, value in flags.items():
        setattr(ns, key, value)
    if args.data:
        ns.data = args.data[-1]
    if args.steps is not None:
        ns.steps = args.steps
    ns.resume = args.resume
    ns.set = list(args.set)
    return int(vq_train.run(ns) or 0)


def _list() -> int:
    from star.training.recipes import RECIPES

    print("stages:  " + ", ".join(sorted(STAGES)))
    print("recipes: " + ", ".join(sorted(RECIPES)))
    return 0


def _run_recipe(args: argparse.Namespace) -> int:
    from star.training.recipes import apply_recipe_overrides, dry_run, get_recipe, run_recipe

    if not args.out:
        raise ValueError("star train --recipe NAME needs --out DIR (the recipe's run folder)")
    extra = [name for name in ("data", "steps", "config") if getattr(args, name)]
    if extra:
        raise ValueError(f"--{extra[0]} applies to one stage; for a recipe use --set STAGE.KEY=VALUE "
                         f"(e.g. --set generation.steps=500)")
    recipe = apply_recipe_overrides(get_recipe(args.recipe, args.out), list(args.set))
    if args.print_config:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    if args.dry_run:
        for command in dry_run(recipe, args.only):
            print(command)
        return 0
    run_recipe(recipe, resume=args.resume, only=args.only, time_budget_min=args.time_budget)
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "stage_flag", None):
        if args.stage and args.stage != args.stage_flag:
            raise ValueError(f"two stages given: {args.stage} and --stage {args.stage_flag}")
        args.stage = args.stage_flag
    if args.list:
        return _list()
    if args.only and not args.recipe:
        raise ValueError("--only selects stages of a recipe; use it with --recipe NAME")
    if args.recipe:
        if args.stage:
            raise ValueError(f"give either a STAGE ({args.stage}) or --recipe {args.recipe}, not both")
        return _run_recipe(args)
    if not args.stage:
        _list()
        raise ValueError("name a STAGE to train (star train generation ...) or a recipe (star train --recipe shapes "
                         "--out DIR)")
    flags = _vq_train_flags(args)
    if args.stage == "vq" and (flags or (args.out and (Path(args.out) / "checkpoint.pt").is_file())):
        return _run_vq_train(args, flags)
    if flags:
        raise ValueError(f"--{sorted(flags)[0].replace('_', '-')} is an option of the tokenizer trainer (star train "
                         f"vq); for stage {args.stage!r} set config fields with --set (e.g. --set batch_size=16)")
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
