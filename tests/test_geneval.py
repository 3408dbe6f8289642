"""ShapeGenEval (star.shapes.geneval): the oracle ceiling, adversarial controls, GenEval's rules on fake detections,
folder and results I/O, the summary, the `star shapes score` command; and ShapeVQA accuracy (star.shapes.vqa)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from star.cli import main as star_main
from star.shapes import geneval as G
from star.shapes import vocab, vqa
from star.shapes.render import render
from star.shapes.sample import geneval_reference_scene, is_heldout, place
from star.shapes.scene import Obj, Scene
from star.shapes.text import GENEVAL_TAGS, geneval_prompts

PROMPTS = geneval_prompts(seed=43, n=100)


def reference_images(resolution: int, aligned: bool = True, seed: int = 0, prompts=PROMPTS):
    rng = np.random.default_rng(seed)
    scenes = [geneval_reference_scene(m, rng, aligned=aligned, split="eval") for m in prompts]
    return scenes, [render(s, resolution) for s in scenes]


def task_scores(images, prompts=PROMPTS) -> dict:
    rows = [G.evaluate_image(im, m) for im, m in zip(images, prompts)]
    return G.summary_scores(rows)["tasks"], rows


# -----------------------------------------------------------------------------
# Oracle ceiling and adversarial controls (research/eval.md §9.4)


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_oracle_every_prompt_scores_one_per_task(resolution):
    _, images = reference_images(resolution)
    tasks, rows = task_scores(images)
    assert set(tasks) == set(GENEVAL_TAGS)
    wrong = [(r["prompt"], r["reason"]) for r in rows if not r["correct"]]
    assert all(score == 1.0 for score in tasks.values()), wrong[:5]


def test_oracle_unaligned_reference_scenes_score_one():
    prompts = PROMPTS[::3]
    _, images = reference_images(128, aligned=False, seed=1, prompts=prompts)
    tasks, rows = task_scores(images, prompts)
    assert all(score == 1.0 for score in tasks.values()), [(r["prompt"], r["reason"]) for r in rows if not r["correct"]]


def test_blank_image_scores_zero_on_every_task():
    blank = Image.new("RGB", (128, 128), vocab.BACKGROUNDS["gray"])
    tasks, _ = task_scores([blank] * len(PROMPTS))
    assert all(score == 0.0 for score in tasks.values())


def _recolor(scene: Scene, meta: dict) -> Scene:
    named = {r["class"]: r["color"] for r in meta["include"] if "color" in r}
    objs = []
    for o in scene.objects:
        if o.shape in named:  # any other colour than the requested one
            new = next(c for c in vocab.COLORS if c != named[o.shape] and c not in named.values())
            o = Obj(**{**o.__dict__, "color": new})
        objs.append(o)
    return Scene(objects=objs, background=scene.background)


def test_wrong_colour_scores_zero():
    prompts = [m for m in PROMPTS if m["tag"] in ("colors", "color_attr")][::2]
    scenes, _ = reference_images(128, prompts=prompts)
    tasks, _ = task_scores([render(_recolor(s, m), 128) for s, m in zip(scenes, prompts)], prompts)
    assert tasks == {"colors": 0.0, "color_attr": 0.0}


def test_wrong_count_scores_zero():
    prompts = [m for m in PROMPTS if m["tag"] == "counting"]
    scenes, _ = reference_images(128, prompts=prompts)
    fewer = [Scene(objects=s.objects[1:], background=s.background) for s in scenes]
    rng = np.random.default_rng(0)
    extra = [place(rng, s.objects[0].shape, "red", "medium", s.objects) or
             place(rng, s.objects[0].shape, "red", "small", s.objects) for s in scenes]
    more = [Scene(objects=s.objects + [e], background=s.background) for s, e in zip(scenes, extra)]
    assert None not in extra
    for variant in (fewer, more):
        tasks, _ = task_scores([render(s, 128) for s in variant], prompts)
        assert tasks == {"counting": 0.0}


def test_mirrored_layout_scores_zero_on_position():
    prompts = [m for m in PROMPTS if m["tag"] == "position"]
    _, images = reference_images(128, prompts=prompts)
    mirrored = [im.transpose(Image.FLIP_LEFT_RIGHT if m["include"][1]["position"][0] in ("left of", "right of")
                             else Image.FLIP_TOP_BOTTOM) for im, m in zip(images, prompts)]
    tasks, _ = task_scores(mirrored, prompts)
    assert tasks == {"position": 0.0}


# -----------------------------------------------------------------------------
# GenEval's rules on hand-made detections


def det(x0, y0, x1, y1, score, mask=None):
    return (np.array([x0, y0, x1, y1, score], dtype=np.float64), mask)


def meta(tag, include, exclude=None):
    m = {"tag": tag, "include": include, "prompt": "p"}
    if exclude:
        m["exclude"] = exclude
    return m


IMG = Image.new("RGB", (200, 100), (128, 128, 128))


def run(raw, metadata, **options):
    opts = G.GenEvalOptions(**options)
    detected = G.filter_detections(raw, metadata, opts)
    return G.evaluate(IMG, detected, metadata, opts), detected


def test_threshold_is_strict():
    m = meta("single_object", [{"class": "circle", "count": 1}])
    (ok, reason), _ = run({"circle": [det(0, 0, 10, 10, 0.3)]}, m)
    assert not ok and reason == "expected circle>=1, found 0"
    (ok, _), _ = run({"circle": [det(0, 0, 10, 10, 0.3000001)]}, m)
    assert ok


def test_counting_threshold_applies_to_the_counting_tag_only():
    include, exclude = [{"class": "star", "count": 2}], [{"class": "star", "count": 3}]
    raw = {"star": [det(0, 0, 10, 10, 0.95), det(50, 0, 60, 10, 0.91), det(100, 0, 110, 10, 0.85)]}
    (ok, _), detected = run(raw, meta("counting", include, exclude))
    assert ok and len(detected["star"]) == 2  # 0.85 <= 0.9 is dropped
    (ok, reason), _ = run(raw, meta("two_object", include, exclude))  # threshold 0.3 keeps all three
    assert not ok and reason == "expected star<3, found 3"
    (ok, _), _ = run(raw, meta("counting", include, exclude), counting_threshold=0.8)
    assert not ok


def test_detections_sorted_by_score_and_capped_at_max_objects():
    raw = {"square": [det(i * 10, 0, i * 10 + 5, 5, 0.31 + i / 100) for i in range(20)]}
    detected = G.filter_detections(raw, meta("single_object", [{"class": "square", "count": 1}]), G.GenEvalOptions())
    scores = [box[4] for box, _ in detected["square"]]
    assert len(scores) == 16 and scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(0.5)
    (ok, _), _ = run(raw, meta("counting", [{"class": "square", "count": 1}], [{"class": "square", "count": 17}]),
                     counting_threshold=0.3)
    assert ok  # 20 detections, but only 16 are kept: the exclude (>= 17) cannot fire


def test_nms_uses_plus_one_iou_and_is_off_at_one():
    assert G.compute_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert G.compute_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)
    raw = {"circle": [det(0, 0, 9, 9, 0.9), det(1, 0, 10, 9, 0.8), det(5, 0, 14, 9, 0.7), det(50, 50, 59, 59, 0.6)]}
    m = meta("single_object", [{"class": "circle", "count": 1}])
    assert len(G.filter_detections(raw, m, G.GenEvalOptions())["circle"]) == 4
    kept = G.filter_detections(raw, m, G.GenEvalOptions(max_overlap=0.5))["circle"]
    assert [box[4] for box, _ in kept] == [0.9, 0.7, 0.6]  # IoU 0.82 suppressed, 1/3 kept


def _color_image():
    rgb = np.full((100, 200, 3), 128, np.uint8)
    rgb[10:40, 10:40] = vocab.COLORS["red"]
    rgb[10:40, 60:90] = vocab.COLORS["blue"]
    masks = []
    for x in (10, 60):
        m = np.zeros((100, 200), bool)
        m[10:40, x:x + 30] = True
        masks.append(m)
    return Image.fromarray(rgb), masks


def test_color_checked_on_the_top_count_objects_only():
    image, (red, blue) = _color_image()
    m = meta("colors", [{"class": "circle", "count": 1, "color": "blue"}])
    raw = {"circle": [det(10, 10, 40, 40, 0.9, red), det(60, 10, 90, 40, 0.8, blue)]}
    detected = G.filter_detections(raw, m, G.GenEvalOptions())
    ok, reason = G.evaluate(image, detected, m)
    assert not ok and reason == "expected blue circle>=1, found 0 blue; and 1 red"
    raw = {"circle": [det(10, 10, 40, 40, 0.7, red), det(60, 10, 90, 40, 0.8, blue)]}
    assert G.evaluate(image, G.filter_detections(raw, m, G.GenEvalOptions()), m)[0]


def test_color_is_computed_inside_the_mask_only():
    image, (red, _) = _color_image()
    wide_box = (np.array([0, 0, 200, 100, 0.9]), red)  # the box covers both squares; the mask only the red one
    assert G.color_classification(image, [wide_box], "circle") == ["red"]
    whole = G.GenEvalOptions(crop="0", bgcolor="original")
    assert G.color_classification(image, [wide_box], "circle", whole) == ["red"]


def test_position_must_hold_for_every_object_target_pair():
    include = [{"class": "circle", "count": 2}, {"class": "square", "count": 1, "position": ["right of", 0]}]
    circles = [det(0, 40, 20, 60, 0.9), det(100, 40, 120, 60, 0.9)]
    (ok, reason), _ = run({"circle": circles, "square": [det(50, 40, 70, 60, 0.9)]}, meta("position", include))
    assert not ok and reason == "expected square right of target, found left of target"
    (ok, _), _ = run({"circle": circles, "square": [det(170, 40, 190, 60, 0.9)]}, meta("position", include))
    assert ok


def test_position_needs_a_matched_target_group():
    include = [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["above", 0]}]
    (ok, reason), _ = run({"square": [det(0, 0, 10, 10, 0.9)]}, meta("position", include))
    assert not ok and reason == "expected circle>=1, found 0\nno target for square to be above"


def test_relative_position_matches_genevals_numpy_rule():
    def geneval_relative_position(obj_a, obj_b, position_threshold=0.1):  # upstream's code, verbatim in numpy
        boxes = np.array([obj_a[0], obj_b[0]])[:, :4].reshape(2, 2, 2)
        center_a, center_b = boxes.mean(axis=-2)
        dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
        offset = center_a - center_b
        revised_offset = np.maximum(np.abs(offset) - position_threshold * (dim_a + dim_b), 0) * np.sign(offset)
        if np.all(np.abs(revised_offset) < 1e-3):
            return set()
        dx, dy = revised_offset / np.linalg.norm(offset)
        rels = set()
        if dx < -0.5: rels.add("left of")  # noqa: E701
        if dx > 0.5: rels.add("right of")  # noqa: E701
        if dy < -0.5: rels.add("above")  # noqa: E701
        if dy > 0.5: rels.add("below")  # noqa: E701
        return rels

    rng = np.random.default_rng(0)
    for _ in range(500):
        a = np.sort(rng.uniform(0, 128, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        b = np.sort(rng.uniform(0, 128, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        t = float(rng.choice([0.0, 0.1, 0.3]))
        assert G.relative_position((a,), (b,), t) == geneval_relative_position((a,), (b,), t)


def test_options_as_genevals_command_line():
    opts = G.GenEvalOptions.from_options(["threshold=0.5", "max_objects=3", "bgcolor=#999", "crop=0"])
    assert (opts.threshold, opts.max_objects, opts.crop, opts.counting_threshold) == (0.5, 3, "0", 0.9)
    with pytest.raises(ValueError, match="unknown geneval option"):
        G.GenEvalOptions.from_options(["model=x"])
    with pytest.raises(ValueError, match="max_objects"):
        G.GenEvalOptions.from_options({"max_objects": "many"})
    with pytest.raises(ValueError, match="threshold"):
        G.GenEvalOptions(threshold=1.5)


def test_result_row_has_genevals_fields():
    scene = Scene(objects=[Obj.at_cell("star", "red", 3, 3)])
    row = G.evaluate_image(render(scene, 128), {"tag": "colors", "prompt": "a photo of a red star",
                                                "include": [{"class": "star", "count": 1, "color": "red"}]})
    assert tuple(row) == G.RESULT_FIELDS and row["correct"] and row["reason"] == ""
    (box,) = json.loads(row["details"])["star"]
    assert len(box) == 5 and box[4] > 0.9
    assert json.loads(row["metadata"])["prompt"] == "a photo of a red star"


# -----------------------------------------------------------------------------
# Folder layout, results.jsonl and the summary


@pytest.fixture
def small_folder(tmp_path):
    prompts = [PROMPTS[0], next(m for m in PROMPTS if m["tag"] == "counting"),
               next(m for m in PROMPTS if m["tag"] == "position")]
    rng = np.random.default_rng(0)
    items = [(m, [render(geneval_reference_scene(m, rng, split="eval"), 64) for _ in range(2)]) for m in prompts]
    items[2][1][1] = Image.new("RGB", (64, 64), (128, 128, 128))  # one wrong image
    G.write_geneval_folder(tmp_path / "images", items)
    return tmp_path / "images", prompts


def test_folder_round_trip(small_folder, tmp_path):
    folder, prompts = small_folder
    assert sorted(os.listdir(folder)) == ["00000", "00001", "00002"]
    assert sorted(os.listdir(folder / "00001" / "samples")) == ["0000.png", "0001.png"]
    with open(folder / "00001" / "metadata.jsonl") as f:
        assert json.load(f) == prompts[1]  # one JSON object, as GenEval reads it
    (folder / "00001" / "grid.png").write_bytes(b"")  # ignored, as GenEval does
    (folder / "00001" / "samples" / "notes.png").write_bytes(b"x")  # not \d+\.png: ignored
    (folder / "scratch").mkdir()  # not all digits: ignored
    results, info = G.evaluate_folder(folder)
    assert info == {"images_found": 6, "prompts_found": 3, "prompts_without_images": [],
                    "files_ignored": [str(folder / "00001" / "samples" / "notes.png")]} and len(results) == 6
    assert [r["correct"] for r in results] == [True, True, True, True, True, False]
    G.write_results(results, tmp_path / "results.jsonl")
    assert G.read_results(tmp_path / "results.jsonl") == results
    summary = G.summary_scores(results, images_found=info["images_found"])
    assert summary["tasks"] == {"single_object": 1.0, "counting": 1.0, "position": 0.5}
    assert summary["overall"] == pytest.approx(2.5 / 3)
    assert summary["correct_images"] == pytest.approx(5 / 6) and summary["correct_prompts"] == 1.0
    assert summary["images_found"] == summary["images_scored"] == 6 and summary["errors"] == []
    assert G.evaluate_folder(folder, workers=2)[0] == results


def test_unreadable_image_is_reported_not_dropped(small_folder):
    folder, _ = small_folder
    path = folder / "00000" / "samples" / "0001.png"
    path.write_bytes(path.read_bytes()[:60])  # truncated PNG
    (folder / "00000" / "samples" / "0002.png").write_bytes(b"not an image")
    results, info = G.evaluate_folder(folder)
    summary = G.summary_scores(results, images_found=info["images_found"])
    assert summary["images_found"] == summary["images_scored"] == 7
    bad = [r for r in results if not r["correct"] and r["reason"].startswith("unreadable image: ")]
    assert sorted(os.path.basename(r["filename"]) for r in bad) == ["0001.png", "0002.png"]
    assert len(summary["errors"]) == 2 and summary["tasks"]["single_object"] == pytest.approx(1 / 3)


def test_bad_layout_errors_name_the_path(small_folder, tmp_path):
    folder, _ = small_folder
    with pytest.raises(FileNotFoundError, match="nope"):
        G.scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no GenEval prompt folders"):
        G.scan_folder(tmp_path / "empty")
    meta_path = folder / "00001" / "metadata.jsonl"
    meta_path.write_text('{"tag": "counting", "prompt": ')
    with pytest.raises(ValueError, match="malformed metadata in .*00001"):
        G.scan_folder(folder)
    meta_path.write_text('[1, 2]')
    with pytest.raises(ValueError, match="00001.*one JSON object"):
        G.scan_folder(folder)
    meta_path.write_text('{"tag": "counting", "prompt": "x", "include": [{"class": "star"}]}')
    with pytest.raises(ValueError, match="integer 'count'"):
        G.scan_folder(folder)
    meta_path.unlink()
    with pytest.raises(FileNotFoundError, match="00001.metadata.jsonl"):
        G.scan_folder(folder)


def test_summary_overall_is_the_unweighted_mean_of_tasks_and_splits_heldout():
    def row(tag, correct, m):
        return {"filename": "f", "tag": tag, "prompt": m["prompt"], "correct": correct, "reason": "",
                "metadata": json.dumps(m), "details": "{}"}

    held = {"tag": "colors", "prompt": "a photo of a purple circle",
            "include": [{"class": "circle", "count": 1, "color": "purple"}]}
    plain = {"tag": "colors", "prompt": "a photo of a red circle",
             "include": [{"class": "circle", "count": 1, "color": "red"}]}
    single = {"tag": "single_object", "prompt": "a photo of a star", "include": [{"class": "star", "count": 1}]}
    assert is_heldout(held) and not is_heldout(plain)
    rows = [row("colors", c, held) for c in (True, False, False, False)] + \
           [row("colors", c, plain) for c in (False, False, False, False)] + [row("single_object", True, single)]
    s = G.summary_scores(rows)
    assert s["tasks"] == {"colors": 1 / 8, "single_object": 1.0} and s["overall"] == pytest.approx((1 / 8 + 1) / 2)
    assert s["total_prompts"] == 3 and s["correct_prompts"] == pytest.approx(2 / 3)  # any of the 4 images
    assert s["heldout"]["total_images"] == 4 and s["heldout"]["overall"] == 0.25
    assert s["in_distribution"]["tasks"] == {"colors": 0.0, "single_object": 1.0}
    assert "Overall score (avg. over tasks): 0.56250" in G.format_summary(s)


def test_score_command(small_folder, tmp_path, capsys):
    folder, _ = small_folder
    out = tmp_path / "scores"
    assert star_main(["shapes", "score", "--suite", "geneval", "--images", str(folder), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == pytest.approx(2.5 / 3) and summary["tasks"]["position"] == 0.5
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    assert "Overall score" in capsys.readouterr().out
    # names GenEval does not score, and a prompt folder left empty, are counted and reported, not silently lost
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    first, second = sorted(p for p in copy.iterdir() if p.name.isdigit())[:2]
    sample = next((first / "samples").iterdir())
    sample.rename(sample.with_suffix(".PNG"))
    for image in (second / "samples").iterdir():
        image.unlink()
    assert star_main(["shapes", "score", "--suite", "geneval", "--images", str(copy), "--quiet"]) == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert str(sample.with_suffix(".PNG")) in summary["files_ignored"]
    assert summary["prompts_without_images"] == [str(second)]
    err = capsys.readouterr().err
    assert "files ignored" in err and "1 prompts without images" in err
    assert star_main(["shapes", "score", "--suite", "geneval", "--images", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert star_main(["shapes", "score", "--suite", "imgedit", "--images", str(folder)]) == 2


# -----------------------------------------------------------------------------
# ShapeVQA


def test_vqa_normalisation_and_accuracy(tmp_path):
    assert vqa.normalize(" Two. ") == vqa.normalize("2") == "2"
    assert vqa.normalize("The RED circle!") == "red circle"
    questions = [{"id": 0, "answer": "two", "family": "count"}, {"id": 1, "answer": "red", "family": "color"},
                 {"id": 2, "answer": "yes", "family": "relation"}, {"id": 3, "answer": "zero", "family": "count"}]
    acc = vqa.accuracy(questions, ["2", "Red.", "no", "0"])
    assert acc["overall"] == 0.75 and acc["families"] == {"count": 1.0, "color": 1.0, "relation": 0.0}
    assert acc["family_mean"] == pytest.approx(2 / 3)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": i, "answer": a}) + "\n"
                                              for i, a in enumerate(["2", "red", "yes"])))
    with pytest.raises(ValueError, match="no prediction"):
        vqa.score_files(tmp_path / "q.jsonl", tmp_path / "p.jsonl")
    # predictions are matched by id, whatever their order; the command scores the same files
    shuffled = [(3, "0"), (1, "Red."), (0, "2"), (2, "no")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": i, "answer": a}) + "\n" for i, a in shuffled))
    scored = vqa.score_files(tmp_path / "q.jsonl", tmp_path / "p.jsonl")
    assert scored["overall"] == 0.75 and scored["families"] == {"count": 1.0, "color": 1.0, "relation": 0.0}
    assert star_main(["shapes", "score", "--suite", "vqa", "--items", str(tmp_path / "q.jsonl"), "--predictions",
                      str(tmp_path / "p.jsonl"), "--quiet"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["overall"] == 0.75
