"""Renderer: deterministic, resolution-independent, every class fills its box, hollow draws a ring."""

import numpy as np
import pytest

from star.shapes import vocab
from star.shapes.render import demo_scene, object_mask, render, template
from star.shapes.scene import Obj, Scene


def test_render_is_deterministic_and_sized():
    a, b = render(demo_scene(), 128), render(demo_scene(), 128)
    assert a.size == (128, 128) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert render(demo_scene(), 64).size == (64, 64)


def test_empty_scene_is_pure_background():
    img = np.asarray(render(Scene(background="khaki"), 32))
    assert (img == np.array(vocab.BACKGROUNDS["khaki"], dtype=np.uint8)).all()


@pytest.mark.parametrize("shape", vocab.CLASSES)
def test_every_orientation_fills_its_box(shape):
    for orientation in vocab.ORIENTATIONS[shape]:
        obj = Obj.at_cell(shape, "red", 2, 2, "large", orientation=orientation)  # box = cells 2..5 of 8, x0.9 fill
        mask = object_mask(obj, 64, supersample=4)  # 256² canvas
        rows, cols = np.nonzero(mask)
        x0, y0, x1, y1 = (v * 256 for v in obj.box())
        for got, want in [(cols.min(), x0), (rows.min(), y0), (cols.max() + 1, x1), (rows.max() + 1, y1)]:
            assert abs(got - want) <= 1.5, (orientation, got, want)


def test_templates_are_distinct_classes():
    names = [(s, o) for s in vocab.CLASSES for o in vocab.ORIENTATIONS[s]]
    for i, (sa, oa) in enumerate(names):
        for sb, ob in names[i + 1:]:
            a, b = template(sa, oa), template(sb, ob)
            iou = (a & b).sum() / (a | b).sum()
            assert iou < 0.9, (sa, oa, sb, ob, iou)


def test_object_colour_and_blend_pixels():
    scene = Scene(objects=[Obj.at_cell("square", "red", 2, 2, "large")])
    img = np.asarray(render(scene, 128)).reshape(-1, 3).astype(int)
    red, gray = np.array(vocab.COLORS["red"]), np.array(vocab.BACKGROUNDS["gray"])
    assert ((img == red).all(1)).sum() > 0.9 * (0.3375 * 128) ** 2
    # BOX filtering: every pixel lies on the segment between the two colours it touches
    t = ((img - gray) @ (red - gray)) / ((red - gray) @ (red - gray))
    assert np.abs(img - (gray + t[:, None] * (red - gray))).max() <= 1.0


def test_hollow_is_a_ring():
    filled = object_mask(Obj.at_cell("circle", "blue", 2, 2, "large"), 64)
    ring = object_mask(Obj.at_cell("circle", "blue", 2, 2, "large", hollow=True), 64)
    assert ring.sum() < 0.6 * filled.sum() and (ring <= filled).all()
    centre = int(ring.shape[0] * (2 + 1.5) / 8)
    assert not ring[centre, centre]


def test_bad_specs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        Obj(shape="hexagon", color="red", cx=0.5, cy=0.5, size=0.2)
    with pytest.raises(ValueError, match="color"):
        Obj(shape="circle", color="teal", cx=0.5, cy=0.5, size=0.2)
    with pytest.raises(ValueError, match="does not fit"):
        Obj.at_cell("circle", "red", 7, 7, "medium")
    with pytest.raises(ValueError, match="resolution"):
        render(demo_scene(), 4)


def test_scene_json_round_trip():
    scene = demo_scene()
    assert Scene.from_json(scene.to_json()) == scene
    with pytest.raises(ValueError, match="unknown fields"):
        Scene.from_dict({"objects": [{"shape": "circle", "color": "red", "cx": 0.5, "cy": 0.5, "size": 0.2, "x": 1}]})
