"""The analytic parser (star.shapes.parse): exact on clean renders, robust to blur + JPEG, clear errors on bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from star.shapes import vocab
from star.shapes.parse import (
    SceneGraph, detections, fit_shape, label_pixels, parse, roundtrip_ok, roundtrip_report, srgb_to_lab,
)
from star.shapes.render import render, template
from star.shapes.sample import random_scene
from star.shapes.scene import Obj, Scene


def degrade(image: Image.Image, sigma: float = 1.0, quality: int = 75) -> Image.Image:
    buf = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(sigma)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def scenes(n: int, seed: int) -> list[Scene]:
    """Half aligned, half unaligned; 1-5 objects of every size band; a quarter on non-default backgrounds."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        bg = str(rng.choice(list(vocab.BACKGROUNDS))) if rng.random() < 0.25 else vocab.DEFAULT_BACKGROUND
        try:
            out.append(random_scene(rng, aligned=len(out) % 2 == 0, n_objects=int(rng.integers(1, 6)), split="eval",
                                    background=bg, sizes=tuple(vocab.SIZE_BANDS)))
        except ValueError:
            continue
    return out


# -----------------------------------------------------------------------------
# Colour science


def test_lab_matches_reference_values():
    # sRGB → CIELAB (D65) reference values
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 255, 255], np.uint8)), [100.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 0, 0], np.uint8)), [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab(np.array([0, 0, 255.0])), [32.30, 79.19, -107.86], atol=0.05)


def test_every_palette_anchor_is_labelled_as_itself_on_every_background():
    lab = srgb_to_lab(np.array(list(vocab.COLORS.values()), dtype=np.float64))
    for bg in vocab.BACKGROUNDS.values():
        label, core = label_pixels(lab, np.array(bg, np.float64))
        assert label.tolist() == list(range(len(vocab.COLORS))) and core.all()


# -----------------------------------------------------------------------------
# Shape fit


@pytest.mark.parametrize("shape", vocab.CLASSES)
def test_shape_fit_recovers_class_orientation_and_box(shape):
    for orient in vocab.ORIENTATIONS[shape]:
        obj = Obj(shape=shape, color="red", cx=0.43, cy=0.56, size=0.25, orientation=orient)
        graph = parse(render(Scene(objects=[obj]), 128))
        (p,) = graph.objects
        assert (p.shape, p.orientation, p.color) == (shape, orient, "red")
        assert p.confidence > 0.93 and p.margin > 0.05
        np.testing.assert_allclose(p.bbox, [v * 128 for v in obj.box()], atol=0.6)  # sub-pixel box
        assert p.size_band == "medium" and not p.hollow


def test_fit_shape_of_the_template_itself_is_near_perfect():
    alpha = template("star", "up", 40).astype(np.float64)
    best = fit_shape(np.pad(alpha, 4))[0]
    assert best[1:3] == ("star", "up") and best[0] > 0.95


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_hollow_state_and_background_name(resolution):
    objs = [Obj.at_cell(s, "blue", 1 + 3 * (i % 2), 1 + 3 * (i // 2), "large", hollow=h)
            for i, (s, h) in enumerate([("square", True), ("circle", False), ("diamond", True), ("cross", True)])]
    graph = parse(render(Scene(objects=objs, background="khaki"), resolution))
    assert graph.background == "khaki"
    got = sorted((p.shape, p.hollow) for p in graph.objects)
    assert got == sorted((o.shape, o.hollow) for o in objs)


# -----------------------------------------------------------------------------
# Accuracy on random scenes (scripts/bench_score.py runs 2,000)


def test_parser_exact_on_200_random_clean_scenes():
    bad = [s for s in scenes(200, seed=1) if not roundtrip_ok(s, render(s, 128))]
    assert not bad, f"{len(bad)} of 200 clean scenes misparsed, e.g. {bad[0].to_json()}"


@pytest.mark.slow
def test_parser_accuracy_on_2000_random_scenes_clean_and_degraded():
    """The issue's bar: >= 99.5% of 2,000 scenes exact when clean, >= 98% after blur sigma=1 px + JPEG q75.

    A scene counts only if class, colour, count, centre and every pairwise relation match (roundtrip_report)."""
    batch = scenes(2000, seed=2024)
    clean = sum(roundtrip_ok(s, render(s, 128)) for s in batch) / len(batch)
    degraded = sum(roundtrip_ok(s, degrade(render(s, 128))) for s in batch) / len(batch)
    assert clean >= 0.995, f"clean accuracy {clean:.4f} < 0.995"
    assert degraded >= 0.98, f"blur+JPEG accuracy {degraded:.4f} < 0.98"


def test_parser_confidence_clears_the_counting_threshold_on_clean_renders():
    confs = [p.confidence for s in scenes(40, seed=2) for p in parse(render(s, 128)).objects]
    assert min(confs) > 0.9  # GenEval's counting_threshold


def test_parser_robust_to_blur_and_jpeg_on_100_scenes():
    results = [roundtrip_report(s, degrade(render(s, 128))) for s in scenes(100, seed=3)]
    accuracy = np.mean([r["ok"] for r in results])
    assert accuracy >= 0.97, f"blur+JPEG accuracy {accuracy:.2%}: {[r for r in results if not r['ok']][:2]}"


def test_unexplained_fraction_is_zero_on_renders_and_large_on_noise():
    s = scenes(1, seed=4)[0]
    assert parse(render(s, 128)).u == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    noise[:2], noise[-2:], noise[:, :2], noise[:, -2:] = 128, 128, 128, 128
    assert parse(noise).u > 0.3


def test_detections_contract_sorted_by_confidence():
    objs = [Obj.at_cell("circle", "red", 0, 0), Obj.at_cell("circle", "blue", 4, 4), Obj.at_cell("star", "red", 0, 4)]
    graph = parse(render(Scene(objects=objs), 128))
    dets = detections(graph)
    assert sorted(dets) == ["circle", "star"] and len(dets["circle"]) == 2
    scores = [box[4] for box, _, _ in dets["circle"]]
    assert scores == sorted(scores, reverse=True)
    box, mask, obj = dets["star"][0]
    assert box.shape == (5,) and mask.shape == (128, 128) and mask.dtype == bool and obj.shape == "star"
    x0, y0, x1, y1 = box[:4]
    ys, xs = np.nonzero(mask)
    assert x0 - 1 <= xs.min() and xs.max() <= x1 and y0 - 1 <= ys.min() and ys.max() <= y1


# -----------------------------------------------------------------------------
# Round trip


def test_roundtrip_rejects_changed_scenes():
    scene = Scene(objects=[Obj.at_cell("circle", "red", 0, 3), Obj.at_cell("square", "blue", 5, 3)])
    assert roundtrip_ok(scene, render(scene, 128))
    assert isinstance(parse(render(scene, 128)), SceneGraph)
    recolored = Scene(objects=[Obj.at_cell("circle", "green", 0, 3), scene.objects[1]])
    swapped = Scene(objects=[Obj.at_cell("circle", "red", 5, 3), Obj.at_cell("square", "blue", 0, 3)])
    extra = Scene(objects=scene.objects + [Obj.at_cell("star", "yellow", 3, 0)])
    for other in (recolored, swapped, extra):
        assert not roundtrip_ok(scene, render(other, 128))
    assert not roundtrip_ok(scene, Image.new("RGB", (128, 128), (128, 128, 128)))


# -----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad", [
    np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3), np.float32),
    np.zeros((4, 4, 3), np.uint8), "image.png", None,
])
def test_bad_input_raises_clear_value_error(bad):
    with pytest.raises(ValueError, match="image"):
        parse(bad)


def test_blank_and_non_rgb_images():
    assert parse(Image.new("L", (64, 64), 128)).objects == []
    rgba = render(Scene(objects=[Obj.at_cell("star", "pink", 3, 3)]), 64).convert("RGBA")
    assert [p.shape for p in parse(rgba).objects] == ["star"]


def test_geneval_mode_splits_colours_multicolor_mode_keeps_objects_whole():
    outer = Obj.at_cell("square", "red", 2, 2, "large")
    dot = Obj(shape="square", color="blue", cx=outer.cx, cy=outer.cy, size=0.1125)  # a part drawn on top
    image = render(Scene(objects=[outer, dot]), 128)
    assert sorted((p.shape, p.color) for p in parse(image).objects) == [("square", "blue"), ("square", "red")]
    (whole,) = parse(image, mode="multicolor").objects
    assert (whole.shape, whole.color, whole.color2, whole.hollow) == ("square", "red", "blue", False)
    with pytest.raises(ValueError, match="mode"):
        parse(image, mode="dpg")
