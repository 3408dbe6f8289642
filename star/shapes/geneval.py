"""ShapeGenEval: a line-by-line port of GenEval's scorer, with the analytic parser as its detector.

Port of djghosh13/geneval `evaluation/evaluate_images.py` (evaluate_image, evaluate, relative_position, compute_iou,
main) and `evaluation/summary_scores.py` (research/eval.md §1.3–1.5, §10.1). Same option names and defaults
(threshold=0.3, counting_threshold=0.9, max_objects=16, max_overlap=1.0, position_threshold=0.1, bgcolor="#999",
crop="1"), same folder layout and results.jsonl fields. Two substitutions, both at GenEval's own seams:
- detector: Mask2Former → any callable image -> {class: [(box [x0, y0, x1, y1, score], mask), …]}; the default is
  `parse.parse` (its scores are template IoUs);
- colour: open_clip zero-shot → the palette colour (CIELAB-nearest) with most pixels inside the object's mask, on
  GenEval's own composite (#999 outside the mask) and crop to the box.
Everything else (strict `>` thresholds, top-`count` selection, colour on the top-`count` objects, position for every
(object, target) pair, exclude = any count ≥ n, summary = mean of task means) follows the original line by line.

Data flow: folder (<NNNNN>/metadata.jsonl + samples/<n>.png) ─▶ evaluate_image (detector ─▶ threshold/NMS ─▶
evaluate) ─▶ results.jsonl ─▶ summary_scores ─▶ summary.json.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageColor, ImageOps
from scipy import ndimage

from star.io import atomic_write
from star.shapes import parse as shape_parse
from star.shapes import vocab
from star.shapes.scene import relative_position as _relative_position

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]  # GenEval's order
assert COLORS == list(vocab.COLORS)
RESULT_FIELDS = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")
IMAGE_NAME = re.compile(r"\d+\.png")

Detection = tuple  # (box: float array [x0, y0, x1, y1, score], mask: (H, W) bool array or None)
Detector = Callable[[Image.Image], dict[str, list[Detection]]]


@dataclass(kw_only=True)
class GenEvalOptions:
    """GenEval's `--options key=value` settings, same names and defaults."""

    threshold: float = 0.3
    """Keep detections with score > threshold (every tag but counting)."""
    counting_threshold: float = 0.9
    """Keep detections with score > counting_threshold when tag == "counting"."""
    max_objects: int = 16
    """At most this many detections per class (after sorting by score)."""
    max_overlap: float = 1.0
    """Greedy NMS IoU threshold (+1-pixel box convention); 1.0 turns NMS off."""
    position_threshold: float = 0.1
    """relative_position shrinks centre offsets by this fraction of the summed box sides."""
    bgcolor: str = "#999"
    """Fill outside the object mask before colour classification ("original" keeps the image)."""
    crop: str = "1"
    """"1": classify the colour on the crop to the box; anything else: on the whole (composited) image."""

    def __post_init__(self) -> None:
        for name in ("threshold", "counting_threshold", "max_overlap", "position_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"geneval option {name} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.max_objects, int) or self.max_objects < 1:
            raise ValueError(f"geneval option max_objects must be an integer >= 1, got {self.max_objects!r}")
        if self.bgcolor != "original":
            try:
                ImageColor.getrgb(self.bgcolor)
            except ValueError as exc:
                raise ValueError(
                    f"geneval option bgcolor must be a colour or 'original', got {self.bgcolor!r}") from exc

    @classmethod
    def from_options(cls, options: dict[str, str] | Iterable[str] | None) -> "GenEvalOptions":
        """From GenEval's `--options` form: ["threshold=0.3", …] or {"threshold": "0.3"}; unknown keys are errors."""
        if options is None:
            return cls()
        if not isinstance(options, dict):
            pairs = {}
            for opt in options:
                if "=" not in opt:
                    raise ValueError(f"geneval options are key=value, got {opt!r}")
                key, value = opt.split("=", 1)
                pairs[key] = value
            options = pairs
        types = {f.name: f.type for f in fields(cls)}
        kwargs = {}
        for key, value in options.items():
            if key not in types:
                raise ValueError(f"unknown geneval option {key!r}; known: {sorted(types)}")
            caster = {"float": float, "int": int}.get(types[key], str)
            try:
                kwargs[key] = caster(value)
            except ValueError as exc:
                raise ValueError(f"geneval option {key} must be {types[key]}, got {value!r}") from exc
        return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Detector and colour classifier (the two substituted parts)


def analytic_detector(image: Image.Image) -> dict[str, list[Detection]]:
    """The default detector: the analytic parser (GenEval mode), as {class: [(box with score, mask), …]}."""
    return {cls: [(box, mask) for box, mask, _ in dets]
            for cls, dets in shape_parse.detections(shape_parse.parse(image)).items()}


def _classify_color(pixels: np.ndarray) -> str:
    """Palette colour with most of the (N, 3) uint8 pixels, by CIELAB-nearest anchor."""
    idx, _ = shape_parse.nearest_palette(shape_parse.srgb_to_lab(pixels))
    return COLORS[int(np.bincount(idx, minlength=len(COLORS)).argmax())]


def color_classification(image: Image.Image, bboxes: list[Detection], classname: str,
                         options: GenEvalOptions | None = None) -> list[str]:
    """One colour per detected object. GenEval's ImageCrops structure: composite the image over `bgcolor` with the
    object's mask, crop to the box, classify; the classifier sees only pixels inside the mask (eroded by 1 px to skip
    antialiased edges, unless that empties it). `classname` is unused, as CLIP's prompt context is gone."""
    options = options or GenEvalOptions()
    rgb = np.asarray(image.convert("RGB"))
    blank = rgb.copy() if options.bgcolor == "original" else np.empty_like(rgb)
    if options.bgcolor != "original":
        blank[:] = ImageColor.getrgb(options.bgcolor)[:3]
    colors = []
    for box, mask, *_ in bboxes:
        if mask is not None:
            assert tuple(rgb.shape[:2]) == tuple(mask.shape), (rgb.shape[:2], mask.shape)
            composite = np.where(mask[..., None], rgb, blank)
            inside = mask
        else:
            composite, inside = rgb, np.ones(rgb.shape[:2], dtype=bool)
        if options.crop == "1":
            x0, y0, x1, y1 = (int(round(v)) for v in box[:4])  # PIL's Image.crop rounds the same way
            x0, y0 = max(x0, 0), max(y0, 0)
            composite, inside = composite[y0:y1, x0:x1], inside[y0:y1, x0:x1]
        core = ndimage.binary_erosion(inside, structure=np.ones((3, 3), dtype=bool))
        pick = core if core.any() else inside
        colors.append(_classify_color(composite[pick]) if pick.any() else "gray")
    return colors


# ----------------------------------------------------------------------------------------------------------------
# The rules (line-by-line port)


def compute_iou(box_a, box_b) -> float:
    area_fn = lambda box: max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)  # noqa: E731 (as upstream)
    i_area = area_fn([
        max(box_a[0], box_b[0]), max(box_a[1], box_b[1]),
        min(box_a[2], box_b[2]), min(box_a[3], box_b[3]),
    ])
    u_area = area_fn(box_a) + area_fn(box_b) - i_area
    return i_area / u_area if u_area else 0


def relative_position(obj_a: Detection, obj_b: Detection, position_threshold: float = 0.1) -> set[str]:
    """Position of A relative to B, factoring in object dimensions (GenEval's rule, shared with star.shapes.scene)."""
    return _relative_position(obj_a[0][:4], obj_b[0][:4], position_threshold)


def evaluate(image: Image.Image, objects: dict[str, list[Detection]], metadata: dict,
             options: GenEvalOptions | None = None) -> tuple[bool, str]:
    """
    Evaluate given image using detected objects on the global metadata specifications.
    Assumptions:
    * Metadata combines 'include' clauses with AND, and 'exclude' clauses with OR
    * All clauses are independent, i.e., duplicating a clause has no effect on the correctness
    * CHANGED: Color and position will only be evaluated on the most confidently predicted objects;
        therefore, objects are expected to appear in sorted order
    """
    options = options or GenEvalOptions()
    correct = True
    reason = []
    matched_groups = []
    # Check for expected objects
    for req in metadata.get('include', []):
        classname = req['class']
        matched = True
        found_objects = objects.get(classname, [])[:req['count']]
        if len(found_objects) < req['count']:
            correct = matched = False
            reason.append(f"expected {classname}>={req['count']}, found {len(found_objects)}")
        else:
            if 'color' in req:
                # Color check
                colors = color_classification(image, found_objects, classname, options)
                if colors.count(req['color']) < req['count']:
                    correct = matched = False
                    reason.append(
                        f"expected {req['color']} {classname}>={req['count']}, found " +
                        f"{colors.count(req['color'])} {req['color']}; and " +
                        ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    )
            if 'position' in req and matched:
                # Relative position check
                expected_rel, target_group = req['position']
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found_objects:
                        for target_obj in matched_groups[target_group]:
                            true_rels = relative_position(obj, target_obj, options.position_threshold)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(
                                    f"expected {classname} {expected_rel} target, found " +
                                    f"{' and '.join(true_rels)} target"
                                )
                                break
                        if not matched:
                            break
        if matched:
            matched_groups.append(found_objects)
        else:
            matched_groups.append(None)
    # Check for non-expected objects
    for req in metadata.get('exclude', []):
        classname = req['class']
        if len(objects.get(classname, [])) >= req['count']:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")
    return correct, "\n".join(reason)


def filter_detections(raw: dict[str, list[Detection]], metadata: dict,
                      options: GenEvalOptions | None = None) -> dict[str, list[Detection]]:
    """GenEval's "determine bounding boxes to keep": per class, sort by score, keep score > threshold (strictly;
    counting_threshold for the counting tag), keep the first max_objects, greedy NMS when max_overlap < 1."""
    options = options or GenEvalOptions()
    confidence_threshold = options.threshold if metadata['tag'] != "counting" else options.counting_threshold
    detected = {}
    for classname in vocab.CLASSES:
        dets = [(np.asarray(d[0], dtype=np.float64), d[1] if len(d) > 1 else None) for d in raw.get(classname, [])]
        if not dets:
            continue
        scores = np.array([box[4] for box, _ in dets])
        ordering = np.argsort(scores)[::-1]
        ordering = ordering[scores[ordering] > confidence_threshold]  # Threshold
        ordering = ordering[:options.max_objects].tolist()  # Limit number of detected objects per class
        detected[classname] = []
        while ordering:
            max_obj = ordering.pop(0)
            detected[classname].append(dets[max_obj])
            ordering = [
                obj for obj in ordering
                if options.max_overlap == 1 or compute_iou(dets[max_obj][0], dets[obj][0]) < options.max_overlap
            ]
        if not detected[classname]:
            del detected[classname]
    return detected


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open as GenEval does (EXIF transpose), fully decoded, RGB. Raises OSError/ValueError on a bad file."""
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")


def evaluate_image(image: Image.Image | str | os.PathLike, metadata: dict, *, detector: Detector | None = None,
                   options: GenEvalOptions | None = None, filename: str | None = None) -> dict:
    """Score one image (a path or a PIL image) against its metadata → one results.jsonl row (GenEval's fields).

    An unreadable image is not an exception: it is scored wrong with reason "unreadable image: …".
    """
    options = options or GenEvalOptions()
    detector = detector or analytic_detector
    if filename is None:
        filename = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<image>"
    row = {'filename': filename, 'tag': metadata['tag'], 'prompt': metadata['prompt']}
    try:
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        elif isinstance(image, Image.Image):
            image.load()
            image = image.convert("RGB")
        else:
            image = Image.fromarray(shape_parse.as_rgb_array(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated, corrupt, not an image
        return {**row, 'correct': False, 'reason': f"unreadable image: {type(exc).__name__}: {exc}",
                'metadata': json.dumps(metadata), 'details': json.dumps({})}
    raw = detector(image)
    detected = filter_detections(raw, metadata, options)
    # Evaluate
    is_correct, reason = evaluate(image, detected, metadata, options)
    return {
        **row,
        'correct': is_correct,
        'reason': reason,
        'metadata': json.dumps(metadata),
        'details': json.dumps({
            key: [[float(v) for v in box] for box, *_ in value]
            for key, value in detected.items()
        }),
    }


# ----------------------------------------------------------------------------------------------------------------
# Folder layout: <IMAGE_FOLDER>/<NNNNN>/metadata.jsonl (one JSON object) + samples/<n>.png


@dataclass
class PromptFolder:
    path: str
    metadata: dict
    images: list[str]
    """Paths of samples/<digits>.png, sorted."""
    ignored: list[str] = field(default_factory=list)
    """Other names in samples/ (GenEval skips them too; reported, not scored)."""


def _check_metadata(meta, path: str) -> dict:
    if not isinstance(meta, dict):
        raise ValueError(f"malformed metadata in {path}: expected one JSON object, got {type(meta).__name__}")
    for key in ("tag", "prompt", "include"):
        if key not in meta:
            raise ValueError(f"malformed metadata in {path}: missing {key!r}")
    for i, req in enumerate(list(meta["include"]) + list(meta.get("exclude", []))):
        if not isinstance(req, dict) or "class" not in req or not isinstance(req.get("count"), int):
            raise ValueError(f"malformed metadata in {path}: clause {i} needs 'class' and an integer 'count': {req}")
    for i, req in enumerate(meta["include"]):
        if "position" in req:
            pos = req["position"]
            if not (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[1], int) and 0 <= pos[1] < i):
                raise ValueError(f"malformed metadata in {path}: include[{i}].position must be [relation, earlier "
                                 f"group index], got {pos}")
    return meta


def scan_folder(imagedir: str | os.PathLike) -> list[PromptFolder]:
    """The prompt folders of a GenEval image folder, in numeric order (GenEval skips non-digit names, as here)."""
    imagedir = os.fspath(imagedir)
    if not os.path.isdir(imagedir):
        raise FileNotFoundError(f"GenEval image folder not found: {imagedir}")
    folders = []
    for subfolder in sorted(os.listdir(imagedir), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        meta_path = os.path.join(folderpath, "metadata.jsonl")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"missing metadata file: {meta_path}")
        with open(meta_path) as fp:
            text = fp.read()
        try:
            metadata = json.loads(text)  # GenEval reads it with json.load: exactly one object
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed metadata in {meta_path}: {exc}") from exc
        _check_metadata(metadata, meta_path)
        sample_dir = os.path.join(folderpath, "samples")
        if not os.path.isdir(sample_dir):
            raise FileNotFoundError(f"missing samples folder: {sample_dir}")
        names = sorted(os.listdir(sample_dir))
        images = [os.path.join(sample_dir, name) for name in names
                  if IMAGE_NAME.fullmatch(name) and os.path.isfile(os.path.join(sample_dir, name))]
        ignored = [os.path.join(sample_dir, name) for name in names if os.path.join(sample_dir, name) not in images]
        folders.append(PromptFolder(path=folderpath, metadata=metadata, images=images, ignored=ignored))
    if not folders:
        raise ValueError(f"no GenEval prompt folders (all-digit names holding metadata.jsonl) in {imagedir}")
    return folders


def _to_pil(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(shape_parse.as_rgb_array(image))


def write_geneval_folder(outdir: str | os.PathLike, items: Iterable[tuple[dict, list]], start: int = 0) -> list[str]:
    """Lay out GenEval's folder from (metadata, [images]) pairs: <outdir>/<index:05>/metadata.jsonl (json.dump of the
    metadata, one object, as GenEval's generator writes it) and samples/<k:04>.png. Returns the prompt folders."""
    outdir = os.fspath(outdir)
    written = []
    for index, (metadata, images) in enumerate(items, start=start):
        _check_metadata(metadata, f"item {index}")
        outpath = os.path.join(outdir, f"{index:0>5}")
        sample_path = os.path.join(outpath, "samples")
        os.makedirs(sample_path, exist_ok=True)
        atomic_write(os.path.join(outpath, "metadata.jsonl"), json.dumps(metadata))
        for k, image in enumerate(images):
            path = os.path.join(sample_path, f"{k:04}.png")
            tmp = path + ".tmp"
            _to_pil(image).save(tmp, format="PNG")
            os.replace(tmp, path)
        written.append(outpath)
    return written




def write_results(results: list[dict], path: str | os.PathLike) -> None:
    """results.jsonl: one JSON object per line with GenEval's fields, in GenEval's order."""
    atomic_write(os.fspath(path), "".join(json.dumps({k: r[k] for k in RESULT_FIELDS}) + "\n" for r in results))


def read_results(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"malformed results line {i} in {path}: {exc}") from exc
            missing = [k for k in RESULT_FIELDS if k not in row]
            if missing:
                raise ValueError(f"results line {i} in {path} lacks fields {missing}")
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Scoring a folder (GenEval's main) and the summary (summary_scores.py)


def _score_one(job: tuple[str, dict]) -> dict:
    path, metadata = job
    return evaluate_image(path, metadata, options=_WORKER_OPTIONS)


_WORKER_OPTIONS: GenEvalOptions | None = None


def evaluate_folder(imagedir: str | os.PathLike, *, detector: Detector | None = None,
                    options: GenEvalOptions | None = None, workers: int = 1) -> tuple[list[dict], dict]:
    """Score every samples/<n>.png of every prompt folder → (results rows, {"images_found", "prompts_found",
    "files_ignored": other names in samples/, "prompts_without_images": prompt folders with no image to score}).

    `workers` > 1 scores in that many processes (default detector only). Every image found yields one row.
    """
    global _WORKER_OPTIONS
    options = options or GenEvalOptions()
    folders = scan_folder(imagedir)
    jobs = [(path, f.metadata) for f in folders for path in f.images]
    if workers > 1 and detector is None and len(jobs) > 1:
        import multiprocessing as mp

        _WORKER_OPTIONS = options
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            results = pool.map(_score_one, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        results = [evaluate_image(path, meta, detector=detector, options=options) for path, meta in jobs]
    return results, {"images_found": len(jobs), "prompts_found": len(folders),
                     "files_ignored": [p for f in folders for p in f.ignored],
                     "prompts_without_images": [f.path for f in folders if not f.images]}


def _task_table(results: list[dict]) -> tuple[dict, float | None]:
    tasks: dict[str, dict] = {}
    for r in results:  # groupby('tag', sort=False): order of first appearance
        t = tasks.setdefault(r["tag"], {"correct": 0, "total": 0})
        t["correct"] += int(bool(r["correct"]))
        t["total"] += 1
    for t in tasks.values():
        t["score"] = t["correct"] / t["total"]
    overall = float(np.mean([t["score"] for t in tasks.values()])) if tasks else None
    return tasks, overall


def _block(results: list[dict]) -> dict:
    tasks, overall = _task_table(results)
    prompts: dict[str, bool] = {}
    for r in results:  # groupby('metadata')['correct'].any()
        prompts[r["metadata"]] = prompts.get(r["metadata"], False) or bool(r["correct"])
    return {
        "overall": overall,
        "tasks": {tag: t["score"] for tag, t in tasks.items()},
        "task_counts": {tag: [t["correct"], t["total"]] for tag, t in tasks.items()},
        "total_images": len(results),
        "total_prompts": len(prompts),
        "correct_images": float(np.mean([bool(r["correct"]) for r in results])) if results else None,
        "correct_prompts": float(np.mean(list(prompts.values()))) if prompts else None,
    }


def summary_scores(results: list[dict], *, images_found: int | None = None,
                   heldout: Callable[[dict], bool] | None = None) -> dict:
    """GenEval's summary: task score = mean image accuracy per tag; overall = unweighted mean of the task scores;
    also % correct images and % correct prompts (any image of the prompt correct). Adds the in-distribution and
    held-out splits (star.shapes.sample.is_heldout on each row's metadata), the unreadable images, and the count of
    images found vs scored."""
    if heldout is None:
        from star.shapes.sample import is_heldout as heldout
    summary = _block(results)
    held = [heldout(json.loads(r["metadata"])) for r in results]
    summary["in_distribution"] = _block([r for r, h in zip(results, held) if not h])
    summary["heldout"] = _block([r for r, h in zip(results, held) if h])
    summary["errors"] = [{"filename": r["filename"], "reason": r["reason"]} for r in results
                         if str(r["reason"]).startswith("unreadable image")]
    summary["images_scored"] = len(results)
    summary["images_found"] = len(results) if images_found is None else images_found
    return summary


def format_summary(summary: dict) -> str:
    """The text GenEval's summary_scores.py prints, plus the splits."""
    lines = ["Summary", "=======",
             f"Total images: {summary['total_images']}",
             f"Total prompts: {summary['total_prompts']}",
             f"% correct images: {summary['correct_images']:.2%}" if summary["correct_images"] is not None else "",
             f"% correct prompts: {summary['correct_prompts']:.2%}" if summary["correct_prompts"] is not None else "",
             "", "Task breakdown", "=============="]
    for tag, score in summary["tasks"].items():
        c, t = summary["task_counts"][tag]
        lines.append(f"{tag:<16} = {score:.2%} ({c} / {t})")
    lines.append("")
    if summary["overall"] is not None:
        lines.append(f"Overall score (avg. over tasks): {summary['overall']:.5f}")
    for split in ("in_distribution", "heldout"):
        block = summary.get(split)
        if block and block["total_images"]:
            lines.append(f"  {split:<16} overall {block['overall']:.5f} over {block['total_images']} images "
                         f"({block['total_prompts']} prompts)")
    lines.append(f"Images found: {summary['images_found']}, scored: {summary['images_scored']}, "
                 f"unreadable: {len(summary['errors'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Prompts and the oracle


def prompt_metadata(seed: int = 43, n: int = 100) -> list[dict]:
    """The ShapeGenEval prompt set (star.shapes.text.geneval_prompts)."""
    from star.shapes.text import geneval_prompts

    return geneval_prompts(seed=seed, n=n)


load_prompts = prompt_metadata


def reference_folder(outdir: str | os.PathLike, *, images_per_prompt: int = 4,
                     resolution: int = vocab.DEFAULT_RESOLUTION, aligned: bool = True, seed: int = 0,
                     prompts: list[dict] | None = None) -> list[str]:
    """Write a GenEval folder of ground-truth renders (the oracle): reference scenes of every prompt."""
    from star.shapes.render import render
    from star.shapes.sample import geneval_reference_scene

    rng = np.random.default_rng(seed)
    prompts = prompt_metadata() if prompts is None else prompts
    items = ((m, [render(geneval_reference_scene(m, rng, aligned=aligned, split="eval"), resolution)
                  for _ in range(images_per_prompt)]) for m in prompts)
    return write_geneval_folder(outdir, items)


__all__ = [
    "COLORS", "RESULT_FIELDS", "GenEvalOptions", "analytic_detector", "color_classification", "compute_iou",
    "relative_position", "evaluate", "filter_detections", "load_image", "evaluate_image", "PromptFolder",
    "scan_folder", "write_geneval_folder", "write_results", "read_results", "evaluate_folder", "summary_scores",
    "format_summary", "prompt_metadata", "load_prompts", "reference_folder",
]
