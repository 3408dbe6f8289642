"""`star eval shapes`: generate with a STAR model, score with the exact ShapeWorld judges, write a summary and a report.

    star eval shapes --suite geneval --out runs/eval/geneval                     # the shipped ShapeWorld model
    star eval shapes --suite wise --reasoning --model runs/stage2/model --out runs/eval/wise-r
    star eval shapes --suite imgedit --out DIR --limit 2                          # 2 items per edit type (smoke run)
    star eval shapes --suite vqa --out DIR                                        # the frozen base's understanding
    star eval shapes --suite vqa --model runs/shapes/base --out DIR               # a base folder on its own

Suites (research/eval.md §10; docs/eval.md has the details):
  geneval  ShapeGenEval prompts (text.geneval_prompts), K images each -> GenEval's folder layout -> the GenEval port
  imgedit  ShapeImgEdit items (edits.imgedit_items), source rendered at the model's resolution -> pipeline.edit
           -> the ImgEdit scorer (1–5 per sample; overall = mean of the type scores)
  vqa      ShapeVQA questions on seeded eval scenes -> pipeline.understand (greedy) -> exact-match accuracy
  wise     ShapeWISE prompts (text.wise_prompts), one image each, plain or with implicit reasoning -> GenEval
           correctness of the item's spec -> category accuracy -> WISE's legacy category weights

Data flow: benchmark set (the same rows as `star shapes prompts`) ─▶ [--limit per task] ─▶ missing outputs only
(resumable) ─▶ pipe.text_to_image / edit / understand in batches, image i seeded with seed + its index in the set
─▶ official files ─▶ the judge ─▶ summary.json + report.md + grid.png.

Every eval function takes a pipeline-like object (`text_to_image`, `edit`, `understand`; see `Pipe`), so a fake
pipeline that returns ground-truth renders runs the same code path (the oracle test: geneval 1.0, imgedit 5.0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol

from PIL import Image, ImageDraw, ImageFont

from star.config import check_sampling
from star.io import atomic_write
from star.shapes import geneval, imgedit, vocab, vqa
from star.shapes.cli_prompts import build as build_benchmark
from star.shapes.edits import EditItem, render_source
from star.shapes.render import render
from star.shapes.scene import Scene
from star.shapes.text import WISE_CATEGORIES, geneval_prompts, wise_answer_prompt, write_jsonl

SUITES: tuple[str, ...] = ("geneval", "imgedit", "vqa", "wise")
Suite = Literal["geneval", "imgedit", "vqa", "wise"]
BENCHMARK_SEEDS = {"imgedit": (0, 200), "vqa": (0, 100), "wise": (0, 200)}  # suite: (set seed, set size); as
# `star shapes prompts`. geneval: text.geneval_prompts() defaults (seed 43, 100 draws per tag).
SEED_STRIDE = 1000   # geneval: image k of prompt i uses seed + SEED_STRIDE * i + k (raising K keeps old images valid)
GRID_SAMPLES = 4     # samples per row of the report grid
GRID_CELL = 128      # pixels per image in the grid (nearest-neighbour upscaling of small images)


class Pipe(Protocol):
    """What the evaluation needs from a pipeline (STARPipeline, or a fake one in tests)."""

    def text_to_image(self, prompt, *, num_images: int = 1, guidance_scale=None, top_k=None, top_p=None,
                      temperature=None, generator=None, reasoning: bool = False, max_answer_tokens: int = 256): ...

    def edit(self, image, prompt, *, guidance_scale=None, top_k=None, top_p=None, temperature=None,
             generator=None, guidance_after_change=None): ...

    def understand(self, image, prompt, *, max_new_tokens: int = 256, temperature: float = 0.0) -> list[str]: ...


@dataclass(kw_only=True)
class EvalConfig:
    """One `star eval shapes` run."""

    suite: Suite
    """Which benchmark: geneval, imgedit, vqa or wise."""
    out: Path
    """Output folder; an existing one is resumed (outputs already there are kept, not regenerated)."""
    model: str | None = None
    """Model folder, recorded in the summary (the pipeline itself is passed to `evaluate`)."""
    limit: int | None = None
    """At most this many items per task (geneval tag, imgedit type, wise category); vqa: this many scenes."""
    images_per_prompt: int = 4
    """geneval: images per prompt (GenEval: 4)."""
    seed: int = 0
    """Sampling seed: output i of the set uses seed + i, geneval image k of prompt i seed + 1000 i + k (independent
    of batching and of resuming)."""
    guidance_scale: float | None = None
    """CFG scale; None = the model's default (as are the three below)."""
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    guidance_after_change: float | None = None
    """imgedit: the CFG scale of an edit once it departs from the source (SamplingConfig); None = the model's."""
    batch_size: int = 16
    """Images (vqa: questions) per pipeline call."""
    reasoning: bool = False
    """geneval / wise: implicit reasoning (the base answers the prompt first; the answer conditions generation)."""
    max_new_tokens: int = 64
    """Text tokens the base may write: vqa answers and reasoning answers."""
    resolution: int | None = None
    """Render resolution of imgedit sources and vqa scenes; None = the model's VQ resolution (else 128)."""

    def __post_init__(self):
        self.out = Path(self.out)
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {SUITES}, got {self.suite!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not 1 <= self.images_per_prompt <= SEED_STRIDE:
            raise ValueError(f"images_per_prompt must be in [1, {SEED_STRIDE}], got {self.images_per_prompt}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.resolution is not None and self.resolution < 16:
            raise ValueError(f"resolution must be >= 16, got {self.resolution}")
        sampling = ("guidance_scale", "top_k", "top_p", "temperature")
        if self.suite == "vqa" and any(getattr(self, k) is not None for k in sampling):
            raise ValueError(f"vqa answers greedily with the base; {', '.join(sampling)} apply to the image suites "
                             f"(geneval, imgedit, wise)")
        if self.guidance_after_change is not None and self.suite != "imgedit":
            raise ValueError(f"guidance_after_change applies to editing (imgedit), not {self.suite}")
        if self.reasoning and self.suite not in ("geneval", "wise"):
            raise ValueError(f"reasoning applies to the text-to-image suites (geneval, wise), not {self.suite}")
        check_sampling(0.0 if self.guidance_scale is None else self.guidance_scale, self.top_k or 0,
                       1.0 if self.top_p is None else self.top_p, self.temperature or 0.0, self.guidance_after_change)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out {self.out} is a file; pass an output folder (an existing one is resumed)")


# -----------------------------------------------------------------------------
# Small helpers: pipeline facts, seeds, files


def model_resolution(pipe) -> int:
    """The side of the images the model generates (its VQ resolution); `pipe.resolution` for fake pipelines."""
    model = getattr(pipe, "model", None)
    if model is not None and hasattr(model, "vq"):
        return int(model.vq.config.resolution)
    return int(getattr(pipe, "resolution", vocab.DEFAULT_RESOLUTION))


def sampling_settings(pipe, cfg: EvalConfig) -> dict:
    """The requested sampling arguments and the values actually used (None -> the model's default for the task);
    vqa decodes its answers greedily."""
    if cfg.suite == "vqa":
        return {"requested": {}, "effective": {"decoding": "greedy"}}
    names = ("guidance_scale", "top_k", "top_p", "temperature") + (("guidance_after_change",) if cfg.suite == "imgedit"
                                                                   else ())
    requested = {k: getattr(cfg, k) for k in names}
    config = getattr(getattr(pipe, "model", None), "config", None)
    defaults = config.default_sampling("edit" if cfg.suite == "imgedit" else "t2i") if config is not None else None
    effective = {k: (getattr(defaults, k, None) if v is None else v) for k, v in requested.items()}
    return {"requested": requested, "effective": effective}


def _generators(pipe, seeds: list[int]) -> list:
    """One torch.Generator per output, on the pipeline's device (what STARPipeline does with `seed`)."""
    import torch

    device = getattr(pipe, "device", "cpu")
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def _sampling_kwargs(cfg: EvalConfig) -> dict:
    return dict(guidance_scale=cfg.guidance_scale, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature)


def _save_png(image: Image.Image, path: Path) -> None:
    """Atomic PNG write: a killed run never leaves a truncated image that a resumed run would keep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed run: that output is simply redone
                continue
    return rows


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def take_per_group(rows: list, key: Callable, limit: int | None) -> list:
    """The first `limit` rows of each group (order kept); all rows when limit is None."""
    if limit is None:
        return list(rows)
    seen: dict = {}
    out = []
    for r in rows:
        k = key(r)
        if seen.get(k, 0) < limit:
            seen[k] = seen.get(k, 0) + 1
            out.append(r)
    return out


def _check_run(cfg: EvalConfig, pipe, resolution: int) -> dict:
    """Write OUT/run.json; refuse to resume a folder whose outputs were made with other settings."""
    record = {"suite": cfg.suite, "model": cfg.model, "seed": cfg.seed, "reasoning": cfg.reasoning,
              "sampling": sampling_settings(pipe, cfg), "resolution": resolution,
              "max_new_tokens": cfg.max_new_tokens if cfg.suite == "vqa" or cfg.reasoning else None,
              "vocab_version": vocab.VOCAB_VERSION}
    path = cfg.out / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}), so {cfg.out} cannot be resumed; use another --out, "
                             f"or delete the folder to start over") from exc
        diff = {k: (old.get(k), v) for k, v in record.items() if old.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{cfg.out} holds outputs made with other settings ({changes}); use another --out, or "
                             f"delete the folder to start over")
    cfg.out.mkdir(parents=True, exist_ok=True)
    _write_json(path, record)
    return record


class _Runner:
    """Runs generation calls; a failing batch is retried one job at a time, and a job that still fails is recorded
    (never dropped: its output stays missing and scores as wrong). If every call fails, the first error is raised."""

    def __init__(self, log: Callable[[str], None]):
        self.errors: list[dict] = []
        self.calls_ok = 0
        self.first_exc: BaseException | None = None
        self.log = log

    def run(self, jobs: list, call: Callable[[list], None], name: Callable[[object], str]) -> None:
        try:
            call(jobs)
            self.calls_ok += 1
            return
        except Exception as exc:  # noqa: BLE001 - recorded per job below, re-raised if nothing works
            if len(jobs) == 1:
                self.first_exc = self.first_exc or exc
                self.errors.append({"item": name(jobs[0]), "error": f"{type(exc).__name__}: {exc}"})
                self.log(f"  error on {name(jobs[0])}: {type(exc).__name__}: {exc}")
                return
        for job in jobs:
            self.run([job], call, name)

    def finish(self) -> None:
        if self.first_exc is not None and self.calls_ok == 0:
            raise self.first_exc


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _progress(log, suite: str, done: int, total: int, t0: float) -> None:
    rate = done / max(time.time() - t0, 1e-9)
    log(f"{suite}: {done}/{total} outputs ({rate:.2f}/s)")


# -----------------------------------------------------------------------------
# geneval: GenEval folder layout + the GenEval port


def eval_geneval(pipe: Pipe, cfg: EvalConfig, log: Callable[[str], None]) -> tuple[dict, list[tuple]]:
    prompts = list(enumerate(geneval_prompts()))                      # index = folder number, stable under --limit
    selected = take_per_group(prompts, lambda r: r[1]["tag"], cfg.limit)
    K, images = cfg.images_per_prompt, cfg.out / "images"
    for index, meta in selected:
        if not (images / f"{index:0>5}" / "metadata.jsonl").is_file():
            geneval.write_geneval_folder(images, [(meta, [])], start=index)
    path = lambda i, k: images / f"{i:0>5}" / "samples" / f"{k:04}.png"  # noqa: E731
    missing = {i: [k for k in range(K) if not path(i, k).is_file()] for i, _ in selected}
    present = sum(K - len(ks) for ks in missing.values())
    answers_path = cfg.out / "answers.jsonl"
    meta_of = dict(selected)
    # Prompts missing all K images run several per call; partly done prompts (a resumed run) run alone.
    full = [i for i, ks in missing.items() if len(ks) == K]
    jobs = _batches(full, max(1, cfg.batch_size // K)) + [[i] for i, ks in missing.items() if 0 < len(ks) < K]
    runner, t0, done, total = _Runner(log), time.time(), 0, sum(len(ks) for ks in missing.values())

    def call(batch: list[int]) -> None:
        nonlocal done
        n = len(missing[batch[0]])
        seeds = [cfg.seed + SEED_STRIDE * i + k for i in batch for k in missing[i]]
        out = pipe.text_to_image([meta_of[i]["prompt"] for i in batch], num_images=n, reasoning=cfg.reasoning,
                                 max_answer_tokens=cfg.max_new_tokens, generator=_generators(pipe, seeds),
                                 **_sampling_kwargs(cfg))
        if len(out.images) != len(seeds):
            raise RuntimeError(f"pipeline returned {len(out.images)} images for {len(seeds)} requested")
        if out.answers is not None:   # answers first: an image on disk always has its answer recorded
            _append_jsonl(answers_path, [{"index": i, "prompt": meta_of[i]["prompt"], "answer": a}
                                         for i, a in zip(batch, out.answers)])
        it = iter(out.images)
        for i in batch:
            for k in missing[i]:
                _save_png(next(it), path(i, k))
        done += len(seeds)
        _progress(log, "geneval", done, total, t0)

    for batch in jobs:
        runner.run(batch, call, lambda i: f"prompt {i:0>5}")
    runner.finish()
    gen_seconds = time.time() - t0

    t1 = time.time()
    results = [geneval.evaluate_image(path(i, k), meta, filename=str(path(i, k).relative_to(cfg.out)))
               for i, meta in selected for k in range(K)]
    found = sum(path(i, k).is_file() for i, _ in selected for k in range(K))
    scores = geneval.summary_scores(results, images_found=found)
    geneval.write_results(results, cfg.out / "results.jsonl")
    if answers_path.is_file():   # keep one answer per prompt, sorted: a stable, diffable file
        last = {r["index"]: r for r in _read_jsonl(answers_path)}
        write_jsonl(answers_path, [last[i] for i in sorted(last)])
    summary = {
        "overall": scores["overall"], "headline": "overall = unweighted mean of the task accuracies (GenEval)",
        "tasks": scores["tasks"], "task_counts": scores["task_counts"],
        "in_distribution": _split(scores["in_distribution"]["overall"], scores["in_distribution"]["total_images"]),
        "heldout": _split(scores["heldout"]["overall"], scores["heldout"]["total_images"]),
        "counts": {"prompts": len(selected), "expected": len(selected) * K, "present_before": present,
                   "generated": done, "found": found, "scored": len(results),
                   "errors": len(runner.errors), "unreadable": len(scores["errors"])},
        "errors": runner.errors + scores["errors"],
        "images_per_prompt": K, "scores": scores,
        "seconds": {"generate": round(gen_seconds, 2), "score": round(time.time() - t1, 2)},
    }
    by_tag: dict[str, list] = {}
    for r in results:
        by_tag.setdefault(r["tag"], []).append(r)
    grid = [(tag, [(cfg.out / r["filename"], r["prompt"], "ok" if r["correct"] else "wrong")
                   for r in rows[::K][:GRID_SAMPLES]]) for tag, rows in by_tag.items()]
    return summary, grid


def _split(overall, n) -> dict:
    return {"overall": overall, "n": n}


# -----------------------------------------------------------------------------
# imgedit: <key>.png + the ImgEdit scorer


def eval_imgedit(pipe: Pipe, cfg: EvalConfig, resolution: int, log) -> tuple[dict, list[tuple]]:
    seed, n = BENCHMARK_SEEDS["imgedit"]
    rows = take_per_group(build_benchmark("imgedit", seed, n), lambda r: r["edit_type"], cfg.limit)
    items_path, images = cfg.out / "items.jsonl", cfg.out / "images"
    write_jsonl(items_path, rows)
    item_of = {r["key"]: EditItem.from_dict({**r, "instruction": r["prompt"]}) for r in rows}
    missing = [r["key"] for r in rows if not (images / f"{r['key']}.png").is_file()]
    present = len(rows) - len(missing)
    runner, t0, done = _Runner(log), time.time(), 0

    def call(keys: list[str]) -> None:
        nonlocal done
        sources = [render_source(item_of[k], resolution) for k in keys]
        kwargs = _sampling_kwargs(cfg)
        if cfg.guidance_after_change is not None:
            kwargs["guidance_after_change"] = cfg.guidance_after_change
        out = pipe.edit(sources, [item_of[k].instruction for k in keys],
                        generator=_generators(pipe, [cfg.seed + int(k) for k in keys]), **kwargs)
        if len(out.images) != len(keys):
            raise RuntimeError(f"pipeline returned {len(out.images)} images for {len(keys)} edits")
        for k, im in zip(keys, out.images):
            _save_png(im, images / f"{k}.png")
        done += len(keys)
        _progress(log, "imgedit", done, len(missing), t0)

    images.mkdir(parents=True, exist_ok=True)
    for batch in _batches(missing, cfg.batch_size):
        runner.run(batch, call, lambda k: f"item {k}")
    runner.finish()
    gen_seconds = time.time() - t0

    t1 = time.time()
    results, scores = imgedit.score_folder(items_path, images)       # the same code as `star shapes score`
    imgedit.write_official(results, scores, cfg.out / "scores")
    summary = {
        "overall": scores["overall"], "headline": scores["headline"] + " (1-5); sample_mean in scores",
        "tasks": scores["types"], "task_counts": scores["type_counts"],
        "in_distribution": _split(scores["in_distribution"]["overall"], scores["in_distribution"]["n"]),
        "heldout": _split(scores["heldout"]["overall"], scores["heldout"]["n"]),
        "counts": {"items": len(rows), "expected": len(rows), "present_before": present, "generated": done,
                   "found": sum((images / f"{r['key']}.png").is_file() for r in rows), "scored": len(results),
                   "errors": len(runner.errors), "unreadable": len(scores["errors"])},
        "errors": runner.errors + scores["errors"], "scores": scores,
        "seconds": {"generate": round(gen_seconds, 2), "score": round(time.time() - t1, 2)},
    }
    by_type: dict[str, list] = {}
    for r in results:
        by_type.setdefault(r["edit_type"], []).append(r)
    grid = [(t, [((render_source(item_of[r["key"]], resolution), images / f"{r['key']}.png"),
                  item_of[r["key"]].instruction, f"{r['sample']:.2f}") for r in by_type[t][:GRID_SAMPLES]])
            for t in imgedit.EDIT_TYPES if t in by_type]
    return summary, grid


# -----------------------------------------------------------------------------
# vqa: answers.jsonl + the ShapeVQA scorer (the frozen base)


def eval_vqa(pipe: Pipe, cfg: EvalConfig, resolution: int, log) -> tuple[dict, list[tuple]]:
    seed, n = BENCHMARK_SEEDS["vqa"]
    rows = build_benchmark("vqa", seed, n if cfg.limit is None else min(n, cfg.limit))
    images, answers_path = cfg.out / "images", cfg.out / "answers.jsonl"
    scenes = {}
    for r in rows:
        p = images / f"{r['scene_id']:05d}.png"
        if r["scene_id"] not in scenes:
            if not p.is_file():
                _save_png(render(Scene.from_dict(r["scene"]), resolution), p)
            scenes[r["scene_id"]] = p
    ids = {r["id"] for r in rows}
    predicted = {a["id"]: a["prediction"] for a in _read_jsonl(answers_path)
                 if a.get("id") in ids and a.get("prediction") is not None}
    missing = [r for r in rows if r["id"] not in predicted]
    present = len(rows) - len(missing)
    runner, t0, done = _Runner(log), time.time(), 0

    def call(batch: list[dict]) -> None:
        nonlocal done
        answers = pipe.understand([_load(scenes[r["scene_id"]]) for r in batch], [r["question"] for r in batch],
                                  max_new_tokens=cfg.max_new_tokens, temperature=0.0)
        if len(answers) != len(batch):
            raise RuntimeError(f"pipeline returned {len(answers)} answers for {len(batch)} questions")
        _append_jsonl(answers_path, [{"id": r["id"], "prediction": a} for r, a in zip(batch, answers)])
        predicted.update({r["id"]: a for r, a in zip(batch, answers)})
        done += len(batch)
        _progress(log, "vqa", done, len(missing), t0)

    for batch in _batches(missing, cfg.batch_size):
        runner.run(batch, call, lambda r: f"question {r['id']}")
    runner.finish()
    gen_seconds = time.time() - t0

    answered = [r for r in rows if r["id"] in predicted]
    table = [{"id": r["id"], "scene_id": r["scene_id"], "family": r["family"], "question": r["question"],
              "answer": r["answer"], "prediction": predicted.get(r["id"]), "heldout": r["heldout"],
              "objects": len(r["scene"]["objects"]),
              "correct": r["id"] in predicted and vqa.is_correct(predicted[r["id"]], r["answer"])} for r in rows]
    write_jsonl(answers_path, table)         # final form: every question, sorted by id, no timings (diffable)
    preds = [predicted.get(r["id"], "") for r in rows]   # an unanswered question counts as wrong, never dropped
    scores = vqa.accuracy(rows, preds)
    sub = lambda h: vqa.accuracy([r for r in rows if r["heldout"] == h],  # noqa: E731
                                 [p for r, p in zip(rows, preds) if r["heldout"] == h])
    ind, held = sub(False), sub(True)
    by_objects = {}                          # does the base find the object it is asked about among n others?
    for n in sorted({t["objects"] for t in table}):
        part = [(r, p) for r, p, t in zip(rows, preds, table) if t["objects"] == n]
        acc = vqa.accuracy([r for r, _ in part], [p for _, p in part])
        by_objects[str(n)] = {"overall": acc["overall"], "n": acc["n"], "tasks": acc["families"]}
    summary = {
        "overall": scores["overall"],
        "headline": "overall = exact-match accuracy over all questions (family_mean in scores)",
        "tasks": scores["families"], "task_counts": scores["counts"],
        "in_distribution": _split(ind["overall"], ind["n"]), "heldout": _split(held["overall"], held["n"]),
        "by_objects": by_objects,
        "blind_baseline": _blind_baseline(rows),
        "counts": {"scenes": len(scenes), "questions": len(rows), "expected": len(rows), "present_before": present,
                   "generated": done, "found": len(answered), "scored": len(rows), "errors": len(runner.errors)},
        "errors": runner.errors, "scores": scores,
        "seconds": {"generate": round(gen_seconds, 2)},
    }
    grid = []
    for fam in dict.fromkeys(r["family"] for r in table):
        cells = [(scenes[r["scene_id"]], f"{r['question']} -> {r['prediction']!s:.40} (gt {r['answer']})",
                  "ok" if r["correct"] else "wrong") for r in table if r["family"] == fam][:GRID_SAMPLES]
        grid.append((fam, cells))
    return summary, grid


def _blind_baseline(rows: list[dict]) -> dict:
    """Accuracy of answering every question with its family's most common answer, without the image: chance level."""
    blind = vqa.accuracy(rows, vqa.blind_answers(rows))
    return {"overall": blind["overall"], "tasks": blind["families"]}


def _load(path: Path) -> Image.Image:
    with Image.open(path) as f:
        return f.convert("RGB")


# -----------------------------------------------------------------------------
# wise: <prompt_id>.png + GenEval correctness of each item's spec, WISE's category weights


WISE_WEIGHTS = dict(WISE_CATEGORIES)


def wise_overall(category_scores: dict[str, float]) -> float | None:
    """WISE legacy Overall = 0.4·Cultural + 0.167·Time + 0.133·Space + 0.1·(Biology + Physics + Chemistry), over the
    categories present (weights renormalised when some are absent, which only happens for tiny sets)."""
    present = {c: s for c, s in category_scores.items() if s is not None}
    if not present:
        return None
    total = sum(WISE_WEIGHTS[c] for c in present)
    return sum(WISE_WEIGHTS[c] * s for c, s in present.items()) / total


def _wise_block(rows: list[dict]) -> dict:
    cats: dict[str, list[int]] = {}
    for r in rows:
        c = cats.setdefault(r["Category"], [0, 0])
        c[0] += int(r["correct"])
        c[1] += 1
    scores = {c: cats[c][0] / cats[c][1] for c in WISE_WEIGHTS if c in cats}
    return {"overall": wise_overall(scores), "categories": scores,
            "category_counts": {c: cats[c] for c in WISE_WEIGHTS if c in cats}, "n": len(rows)}


def eval_wise(pipe: Pipe, cfg: EvalConfig, log) -> tuple[dict, list[tuple]]:
    seed, n = BENCHMARK_SEEDS["wise"]
    items = take_per_group(build_benchmark("wise", seed, n), lambda r: r["Category"], cfg.limit)
    images, answers_path = cfg.out / "images", cfg.out / "answers.jsonl"
    write_jsonl(cfg.out / "prompts.jsonl", items)
    item_of = {it["prompt_id"]: it for it in items}
    path = lambda pid: images / f"{pid}.png"  # noqa: E731
    missing = [it["prompt_id"] for it in items if not path(it["prompt_id"]).is_file()]
    present = len(items) - len(missing)
    runner, t0, done = _Runner(log), time.time(), 0

    def call(pids: list[int]) -> None:
        nonlocal done
        out = pipe.text_to_image([item_of[p]["Prompt"] for p in pids], num_images=1, reasoning=cfg.reasoning,
                                 max_answer_tokens=cfg.max_new_tokens,
                                 generator=_generators(pipe, [cfg.seed + p - 1 for p in pids]), **_sampling_kwargs(cfg))
        if len(out.images) != len(pids):
            raise RuntimeError(f"pipeline returned {len(out.images)} images for {len(pids)} prompts")
        if out.answers is not None:   # answers first: an image on disk always has its answer recorded
            _append_jsonl(answers_path, [{"prompt_id": p, "answer": a} for p, a in zip(pids, out.answers)])
        for p, im in zip(pids, out.images):
            _save_png(im, path(p))
        done += len(pids)
        _progress(log, "wise", done, len(missing), t0)

    images.mkdir(parents=True, exist_ok=True)
    for batch in _batches(missing, cfg.batch_size):
        runner.run(batch, call, lambda p: f"prompt_id {p}")
    runner.finish()
    gen_seconds = time.time() - t0

    t1 = time.time()
    answers = {a["prompt_id"]: a["answer"] for a in _read_jsonl(answers_path) if "answer" in a}
    rows = []
    for it in items:
        pid = it["prompt_id"]
        r = geneval.evaluate_image(path(pid), it["spec"], filename=str(path(pid).relative_to(cfg.out)))
        row = {"prompt_id": pid, "Category": it["Category"], "Subcategory": it["Subcategory"], "Prompt": it["Prompt"],
               "target": wise_answer_prompt(it), "heldout": it["heldout"], "correct": bool(r["correct"]),
               "reason": r["reason"], "details": r["details"]}
        if cfg.reasoning:
            row["answer"] = answers.get(pid)
            row["answer_matches_target"] = row["answer"] is not None and (
                vqa.normalize(row["answer"]) == vqa.normalize(row["target"]))
        rows.append(row)
    write_jsonl(cfg.out / "scores.jsonl", rows)
    if cfg.reasoning:      # final form, sorted; answers of prompts outside this --limit stay with their images
        kept = {a["prompt_id"]: a for a in _read_jsonl(answers_path) if a.get("answer") is not None}
        kept.update({r["prompt_id"]: {"prompt_id": r["prompt_id"], "Prompt": r["Prompt"], "answer": r["answer"],
                                      "target": r["target"]} for r in rows if r["answer"] is not None})
        write_jsonl(answers_path, [kept[p] for p in sorted(kept)])
    block = _wise_block(rows)
    ind, held = _wise_block([r for r in rows if not r["heldout"]]), _wise_block([r for r in rows if r["heldout"]])
    unreadable = [{"filename": str(path(r["prompt_id"]).relative_to(cfg.out)), "reason": r["reason"]}
                  for r in rows if r["reason"].startswith("unreadable image")]
    summary = {
        "overall": block["overall"],
        "headline": ("overall = WISE legacy weights (0.4 Cultural, 0.167 Time, 0.133 Space, 0.1 Biology/Physics/"
                     "Chemistry) over category accuracies; an image is correct when it satisfies the item's spec "
                     "under the GenEval port"),
        "tasks": block["categories"], "task_counts": block["category_counts"],
        "in_distribution": _split(ind["overall"], ind["n"]), "heldout": _split(held["overall"], held["n"]),
        "counts": {"prompts": len(items), "expected": len(items), "present_before": present, "generated": done,
                   "found": sum(path(it["prompt_id"]).is_file() for it in items), "scored": len(rows),
                   "errors": len(runner.errors), "unreadable": len(unreadable)},
        "errors": runner.errors + unreadable,
        "scores": {"subcategories": _subcategories(rows)},
        "seconds": {"generate": round(gen_seconds, 2), "score": round(time.time() - t1, 2)},
    }
    if cfg.reasoning:
        with_answer = [r for r in rows if r["answer"] is not None]
        summary["scores"]["answer_accuracy"] = (sum(r["answer_matches_target"] for r in with_answer) / len(with_answer)
                                                if with_answer else None)
        summary["scores"]["answers_recorded"] = len(with_answer)
    grid = []
    for cat in WISE_WEIGHTS:
        cells = [(path(r["prompt_id"]), r["Prompt"] + (f" => {r['answer']!s:.40}" if cfg.reasoning else ""),
                  "ok" if r["correct"] else "wrong") for r in rows if r["Category"] == cat][:GRID_SAMPLES]
        if cells:
            grid.append((cat, cells))
    return summary, grid


def _subcategories(rows: list[dict]) -> dict:
    subs: dict[str, list[int]] = {}
    for r in rows:
        s = subs.setdefault(f"{r['Category']}/{r['Subcategory']}", [0, 0])
        s[0] += int(r["correct"])
        s[1] += 1
    return {k: v[0] / v[1] for k, v in subs.items()}


# -----------------------------------------------------------------------------
# Report: grid.png (rows = tasks) + report.md


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _cell_image(x) -> Image.Image:
    """A cell: one image (a path or PIL image), or a (source, output) pair side by side; scaled to GRID_CELL."""
    if isinstance(x, tuple):
        a, b = _cell_image(x[0]), _cell_image(x[1])
        both = Image.new("RGB", (a.width + b.width + 4, GRID_CELL), (255, 255, 255))
        both.paste(a, (0, 0))
        both.paste(b, (a.width + 4, 0))
        return both
    if isinstance(x, (str, Path)):
        if not Path(x).is_file():
            return Image.new("RGB", (GRID_CELL, GRID_CELL), (220, 220, 220))
        x = _load(Path(x))
    resample = Image.Resampling.NEAREST if x.width <= GRID_CELL else Image.Resampling.LANCZOS
    return x.convert("RGB").resize((GRID_CELL, GRID_CELL), resample)


def make_grid(rows: list[tuple[str, list[tuple]]], path: Path) -> Path:
    """rows = [(task, [(image | path | (source, output), label, mark), ...]), ...] -> one labelled PNG."""
    font, line_h, label_lines, name_w, pad = _font(), 13, 4, 110, 6
    cells = [[(_cell_image(img), label, mark) for img, label, mark in cs] for _, cs in rows]
    cell_w = max([c[0].width for cs in cells for c in cs] + [GRID_CELL])
    cols = max([len(cs) for cs in cells] + [1])
    row_h = GRID_CELL + line_h * (label_lines + 1) + pad
    canvas = Image.new("RGB", (name_w + cols * (cell_w + pad), max(1, len(rows)) * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    chars = max(12, cell_w // 6)
    for r, ((task, _), cs) in enumerate(zip(rows, cells)):
        y = pad + r * row_h
        draw.text((4, y + GRID_CELL // 2), task, fill=(0, 0, 0), font=font)
        for c, (im, label, mark) in enumerate(cs):
            x = name_w + c * (cell_w + pad)
            canvas.paste(im, (x, y))
            color = (0, 128, 0) if mark == "ok" else (180, 0, 0) if mark == "wrong" else (0, 0, 128)
            draw.text((x, y + GRID_CELL + 1), mark, fill=color, font=font)
            for i, line in enumerate(textwrap.wrap(label, chars)[:label_lines]):
                draw.text((x, y + GRID_CELL + line_h * (i + 1)), line, fill=(40, 40, 40), font=font)
    _save_png(canvas, path)
    return path


def _fmt(x, suite: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}" if suite == "imgedit" else f"{x:.4f}"


def write_report(summary: dict, path: Path) -> Path:
    s, suite = summary, summary["suite"]
    c = s["counts"]
    lines = [f"# ShapeWorld eval: {suite}", "",
             f"- model: `{s['model']}`", f"- reasoning: {s['reasoning']}",
             "- sampling (effective): " + ", ".join(f"{k}={v}" for k, v in s["sampling"]["effective"].items()),
             f"- seed: {s['seed']}, limit per task: {s['limit']}, resolution: {s['resolution']}"
             + (f", images per prompt: {s['images_per_prompt']}" if "images_per_prompt" in s else ""), "",
             f"**Overall: {_fmt(s['overall'], suite)}** — {s['headline']}.", "",
             "| task | score | correct / total |" if suite != "imgedit" else "| type | score | items |",
             "|---|---|---|"]
    for task, score in s["tasks"].items():
        n = s["task_counts"].get(task)
        lines.append(f"| {task} | {_fmt(score, suite)} | {' / '.join(map(str, n)) if isinstance(n, list) else n} |")
    lines += ["", "| split | overall | n |", "|---|---|---|",
              f"| in-distribution | {_fmt(s['in_distribution']['overall'], suite)} | {s['in_distribution']['n']} |",
              f"| held-out | {_fmt(s['heldout']['overall'], suite)} | {s['heldout']['n']} |", ""]
    if "by_objects" in s:
        families = list(s["tasks"])
        lines += ["| objects in the scene | overall | n | " + " | ".join(families) + " |",
                  "|---" * (3 + len(families)) + "|"]
        lines += [f"| {n} | {_fmt(b['overall'], suite)} | {b['n']} | "
                  + " | ".join(_fmt(b["tasks"][f], suite) if f in b["tasks"] else "—" for f in families) + " |"
                  for n, b in s["by_objects"].items()] + [""]
    if "blind_baseline" in s:
        b = s["blind_baseline"]
        lines += [f"Blind baseline (each family's most common answer, no image): {_fmt(b['overall'], suite)} ("
                  + ", ".join(f"{f} {_fmt(v, suite)}" for f, v in b["tasks"].items()) + ").", ""]
    if suite == "wise" and "answer_accuracy" in s["scores"]:
        lines += [f"Reasoning answers equal to the target prompt: {_fmt(s['scores']['answer_accuracy'], suite)} "
                  f"({s['scores']['answers_recorded']} answers recorded in answers.jsonl).", ""]
    lines += ["Counts: " + ", ".join(f"{k} {v}" for k, v in c.items()) + ".", ""]
    if s["errors"]:
        lines += [f"Errors ({len(s['errors'])}, first 10; missing outputs score as wrong):", ""]
        lines += [f"- {json.dumps(e)}" for e in s["errors"][:10]] + [""]
    lines += [f"![samples]({s['grid']})", "", "Files: " + ", ".join(f"`{f}`" for f in s["files"]) + "."]
    atomic_write(path, "\n".join(lines) + "\n")
    return path


# -----------------------------------------------------------------------------
# Entry point


OFFICIAL_FILES = {
    "geneval": ["images/<NNNNN>/metadata.jsonl", "images/<NNNNN>/samples/<nnnn>.png", "results.jsonl",
                "answers.jsonl (with reasoning)"],
    "imgedit": ["items.jsonl", "images/<key>.png", "scores/result.json", "scores/average_score.json",
                "scores/typescore.json", "scores/results.jsonl"],
    "vqa": ["images/<scene>.png", "answers.jsonl"],
    "wise": ["prompts.jsonl", "images/<prompt_id>.png", "scores.jsonl", "answers.jsonl (with reasoning)"],
}


def evaluate(pipe: Pipe, cfg: EvalConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run one suite with `pipe` into cfg.out (resuming what is there); returns the summary (also in summary.json)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.time()
    resolution = cfg.resolution or model_resolution(pipe)
    _check_run(cfg, pipe, resolution)
    if cfg.suite == "geneval":
        summary, grid = eval_geneval(pipe, cfg, log)
    elif cfg.suite == "imgedit":
        summary, grid = eval_imgedit(pipe, cfg, resolution, log)
    elif cfg.suite == "vqa":
        summary, grid = eval_vqa(pipe, cfg, resolution, log)
    else:
        summary, grid = eval_wise(pipe, cfg, log)
    make_grid(grid, cfg.out / "grid.png")
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "suite", "model", "guidance_scale", "top_k",
                                                                   "top_p", "temperature", "guidance_after_change")}
    if cfg.suite != "geneval":
        settings.pop("images_per_prompt")
    summary = {"suite": cfg.suite, "overall": summary.pop("overall"), "model": cfg.model,
               **settings, "resolution": resolution, "sampling": sampling_settings(pipe, cfg),
               "vocab_version": vocab.VOCAB_VERSION, **summary, "grid": "grid.png",
               "files": OFFICIAL_FILES[cfg.suite] + ["summary.json", "report.md", "grid.png", "run.json"]}
    summary["seconds"]["total"] = round(time.time() - t0, 2)
    _write_json(cfg.out / "summary.json", summary)
    write_report(summary, cfg.out / "report.md")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star.commands import add_model_arguments

    parser.add_argument("--suite", required=True, choices=SUITES, help="which benchmark")
    parser.add_argument("--out", required=True, help="output folder (an existing one is resumed)")
    add_model_arguments(parser)
    parser.add_argument("--reasoning", action="store_true",
                        help="geneval/wise: implicit reasoning (the base answers the prompt; the answer is drawn)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N items per task (geneval tag, imgedit type, wise category); vqa: N scenes")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="geneval: images per prompt (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; output i of the set uses seed + i")
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)")
    parser.add_argument("--top-k", type=int, default=None, help="top-k filter, 0 = off (default: the model's)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus filter, 1 = off (default: the model's)")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the model's)")
    parser.add_argument("--guidance-after-change", type=float, default=None,
                        help="imgedit: CFG scale of an edit once it departs from the source (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16, help="images (vqa: questions) per call (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="text tokens of the base's answers: vqa answers, reasoning answers (default 64)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="imgedit sources / vqa scenes render size (default: the model's resolution)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from star.commands import DEFAULT_MODEL, load_pipeline

    cfg = EvalConfig(suite=args.suite, out=Path(args.out), limit=args.limit, images_per_prompt=args.images_per_prompt,
                     seed=args.seed, guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p,
                     temperature=args.temperature, guidance_after_change=args.guidance_after_change,
                     batch_size=args.batch_size, reasoning=args.reasoning,
                     max_new_tokens=args.max_new_tokens, resolution=args.resolution,
                     model=str(Path(args.model).resolve()) if args.model else str(DEFAULT_MODEL))
    pipe = load_pipeline(args, understanding_only=cfg.suite == "vqa")    # vqa also takes a bare base folder
    summary = evaluate(pipe, cfg, log=(lambda msg: None) if args.quiet else None)
    c = summary["counts"]
    overall = _fmt(summary["overall"], cfg.suite)
    print(f"ShapeWorld {cfg.suite}{' (reasoning)' if cfg.reasoning else ''}: overall {overall}; "
          + ", ".join(f"{t} {_fmt(s, cfg.suite)}" for t, s in summary["tasks"].items())
          + f"; {c['scored']} scored, {c['generated']} generated, {c['present_before']} resumed, {c['errors']} errors;"
          + f" wrote {cfg.out}/summary.json and report.md")
    return 0


__all__ = ["SUITES", "EvalConfig", "Pipe", "evaluate", "eval_geneval", "eval_imgedit", "eval_vqa", "eval_wise",
           "model_resolution", "sampling_settings", "take_per_group", "wise_overall", "make_grid", "write_report"]
