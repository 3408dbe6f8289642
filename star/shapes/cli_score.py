"""`star shapes score`: score generated images (or answers) with ShapeWorld's exact, judge-free scorers.

    star shapes score --suite geneval --images DIR [--out DIR2] [--options threshold=0.3 ...] [--workers N]
    star shapes score --suite imgedit --items items.jsonl --images DIR [--out DIR2]
    star shapes score --suite vqa --items questions.jsonl --predictions answers.jsonl [--out DIR2]

geneval: DIR is GenEval's layout (<NNNNN>/metadata.jsonl + samples/<n>.png); writes results.jsonl (GenEval's fields)
and summary.json (overall, per-task scores, % correct images/prompts, in-distribution vs held-out, errors).
imgedit: items from `star shapes prompts --suite imgedit`, outputs DIR/<key>.png; writes ImgEdit's result.json,
average_score.json, typescore.json plus summary.json and results.jsonl.
vqa: questions from `star shapes prompts --suite vqa`, predictions {"id", "answer"} per line; writes summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", required=True, choices=("geneval", "imgedit", "vqa"), help="which benchmark")
    parser.add_argument("--images", help="geneval: GenEval image folder; imgedit: folder of <key>.png outputs")
    parser.add_argument("--items", help="imgedit: items JSONL; vqa: questions JSONL")
    parser.add_argument("--predictions", help="vqa: answers JSONL with {id, answer} rows")
    parser.add_argument("--out", help="folder for summary.json and the per-item files (default: --images, or the "
                                      "folder of --predictions for vqa)")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="geneval options, as GenEval's --options (threshold, counting_threshold, max_objects, "
                             "max_overlap, position_threshold, bgcolor, crop)")
    parser.add_argument("--workers", type=int, default=1, help="geneval: scoring processes (default 1)")
    parser.add_argument("--quiet", action="store_true", help="print only the headline line")


def _need(args, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise ValueError(f"--suite {args.suite} needs {' and '.join(missing)}")


def _write_json(path: str, obj) -> None:
    from star.io import atomic_write

    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    if args.suite == "geneval":
        from star.shapes import geneval

        _need(args, "images")
        options = geneval.GenEvalOptions.from_options(args.options)
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        results, info = geneval.evaluate_folder(args.images, options=options, workers=args.workers)
        summary = geneval.summary_scores(results, images_found=info["images_found"])
        for key in ("files_ignored", "prompts_without_images"):     # counted and reported, as GenEval skips them
            summary[key] = info[key]
            if info[key]:
                print(f"warning: {len(info[key])} {key.replace('_', ' ')} (first: {info[key][0]}); GenEval scores "
                      f"only samples/<digits>.png", file=sys.stderr)
        summary["options"] = vars(options)
        summary["seconds"] = round(time.time() - t0, 3)
        out = args.out or args.images
        geneval.write_results(results, os.path.join(out, "results.jsonl"))
        _write_json(os.path.join(out, "summary.json"), summary)
        if not args.quiet:
            print(geneval.format_summary(summary))
        print(f"ShapeGenEval overall {summary['overall']:.4f} ({summary['images_scored']} images, "
              f"{summary['images_scored'] / max(summary['seconds'], 1e-9):.1f} images/s); wrote {out}/summary.json")
    elif args.suite == "imgedit":
        from star.shapes import imgedit

        _need(args, "items", "images")
        results, summary = imgedit.score_folder(args.items, args.images)
        summary["seconds"] = round(time.time() - t0, 3)
        out = args.out or args.images
        imgedit.write_official(results, summary, out)
        if not args.quiet:
            for t, s in summary["types"].items():
                print(f"{t:<12} {s:.2f} ({summary['type_counts'][t]} items)")
            if summary["errors"]:
                print(f"unreadable outputs: {len(summary['errors'])}")
        print(f"ShapeImgEdit overall {summary['overall']:.2f} (mean of type scores; sample mean "
              f"{summary['sample_mean']:.2f}, {summary['n']} items); wrote {out}/summary.json")
    else:
        from star.shapes import vqa

        _need(args, "items", "predictions")
        summary = vqa.score_files(args.items, args.predictions)
        out = args.out or os.path.dirname(os.path.abspath(args.predictions))
        _write_json(os.path.join(out, "summary.json"), summary)
        if not args.quiet:
            for f, a in summary["families"].items():
                print(f"{f:<10} {a:.2%} ({summary['counts'][f][0]} / {summary['counts'][f][1]})")
        print(f"ShapeVQA accuracy {summary['overall']:.4f} ({summary['n']} questions); wrote {out}/summary.json")
    return 0
