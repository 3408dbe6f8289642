"""ShapeImgEdit scoring (star.shapes.imgedit): ground-truth targets score 5.0, unedited sources 1, partial edits in
between by the rubric; ImgEdit's aggregation and file formats; the `star shapes score --suite imgedit` command."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from star.cli import main as star_main
from star.shapes import imgedit as IE
from star.shapes.cli_prompts import build
from star.shapes.edits import EDIT_TYPES, EditItem, random_edit, render_on, render_source, render_target
from star.shapes.render import render
from star.shapes.scene import Obj, Scene


@pytest.fixture(scope="module")
def items() -> list[EditItem]:
    """Three items of every type: two aligned, one unaligned (non-default backgrounds included)."""
    rng = np.random.default_rng(0)
    return [random_edit(rng, t, aligned=k < 2, split="eval", background_p=0.4) for t in EDIT_TYPES for k in range(3)]


def compliance(result: dict) -> int:
    return result["scores"][IE.SUBSCORE_NAMES[result["edit_type"]][0]]


def test_ground_truth_target_scores_five(items):
    for item in items:
        r = IE.score_item(item, render_target(item, 128))
        assert r["sample"] == 5.0, (item.edit_type, item.instruction, r["scores"], r["metrics"])
        assert list(r["scores"]) == list(IE.SUBSCORE_NAMES[item.edit_type])


def test_ground_truth_target_scores_five_at_other_resolutions(items):
    for item in items[::4]:
        for res in (96, 256):
            assert IE.score_item(item, render_target(item, res))["sample"] == 5.0, (res, item.instruction)


def test_unedited_source_scores_one(items):
    for item in items:
        r = IE.score_item(item, render_source(item, 128))
        assert compliance(r) == 1 and r["sample"] == 1.0, (item.edit_type, item.instruction, r["metrics"])


def test_blank_output_scores_one(items):
    for item in items[::3]:
        assert IE.score_item(item, Image.new("RGB", (128, 128), (128, 128, 128)))["sample"] == 1.0


# -----------------------------------------------------------------------------
# Partial and wrong edits, on hand-made items


def two_objects() -> Scene:
    return Scene(objects=[Obj.at_cell("circle", "red", 0, 0), Obj.at_cell("square", "blue", 4, 4)])


def item_of(edit_type, source, target, details) -> EditItem:
    return EditItem(source=source, instruction="test", target=target, edit_type=edit_type, details=details)


def test_adjust_colour_right_object_wrong_value_and_wrong_object():
    s = two_objects()
    t = Scene(objects=[replace(s.objects[0], color="green"), s.objects[1]])
    item = item_of("adjust", s, t, {"op": "adjust", "attribute": "color", "index": 0, "from": "red", "to": "green"})
    assert IE.score_item(item, render(t))["sample"] == 5.0
    wrong_value = Scene(objects=[replace(s.objects[0], color="yellow"), s.objects[1]])
    assert compliance(IE.score_item(item, render(wrong_value))) == 3
    wrong_object = Scene(objects=[s.objects[0], replace(s.objects[1], color="green")])
    r = IE.score_item(item, render(wrong_object))
    assert compliance(r) == 2 and r["scores"]["Physical & Detail Fidelity"] <= 2  # capped by S1


def test_collateral_change_lowers_compliance_and_preservation():
    s = Scene(objects=[Obj.at_cell("circle", "red", 0, 0), Obj.at_cell("square", "blue", 4, 4),
                       Obj.at_cell("star", "yellow", 0, 4), Obj.at_cell("cross", "white", 4, 0)])
    t = Scene(objects=[replace(s.objects[0], color="green")] + s.objects[1:])
    item = item_of("adjust", s, t, {"op": "adjust", "attribute": "color", "index": 0, "from": "red", "to": "green"})
    one_moved = Scene(objects=t.objects[:3] + [Obj.at_cell("cross", "white", 6, 0)])
    r = IE.score_item(item, render(one_moved))
    assert r["metrics"]["p"] == pytest.approx(2 / 3) and compliance(r) == 3
    one_extra = Scene(objects=t.objects + [Obj.at_cell("arrow", "pink", 6, 6)])
    r = IE.score_item(item, render(one_extra))
    assert r["metrics"]["e"] == 1 and compliance(r) == 4


def test_remove_remnant_is_partial():
    s = two_objects()
    t = Scene(objects=[s.objects[1]])
    item = item_of("remove", s, t, {"op": "remove", "index": 0, "object": s.objects[0].__dict__})
    assert IE.score_item(item, render(t))["sample"] == 5.0
    half = np.array(render(s))
    half[:, 16:] = np.array(render(t))[:, 16:]  # the circle's right half erased
    assert compliance(IE.score_item(item, half)) == 3


def test_the_old_object_must_be_gone_and_an_unrelated_output_scores_one():
    s = two_objects()
    removed = item_of("remove", s, Scene(objects=[s.objects[1]]),
                      {"op": "remove", "index": 0, "object": s.objects[0].__dict__})
    moved_instead = Scene(objects=[Obj.at_cell("circle", "red", 0, 5), s.objects[1]])
    assert compliance(IE.score_item(removed, render(moved_instead))) == 2
    t = Scene(objects=[Obj.at_cell("star", "red", 0, 0), s.objects[1]])
    replaced = item_of("replace", s, t, {"op": "replace", "index": 0, "from": "circle", "to": "star"})
    assert IE.score_item(replaced, render(t))["sample"] == 5.0
    kept_beside = Scene(objects=t.objects + [Obj.at_cell("circle", "red", 0, 5)])
    assert IE.score_item(replaced, render(kept_beside))["metrics"]["status"] == "partial"
    t = Scene(objects=[Obj.at_cell("circle", "red", 2, 0), s.objects[1]])
    move = item_of("action", s, t, {"op": "action", "action": "move", "index": 0})
    assert IE.score_item(move, render(t))["sample"] == 5.0
    copied = Scene(objects=t.objects + [s.objects[0]])
    assert IE.score_item(move, render(copied))["metrics"]["status"] == "partial"
    # neither the edit nor the scene: as low as the unchanged source
    unrelated = Scene(objects=[Obj.at_cell("arrow", "pink", 2, 2), Obj.at_cell("star", "white", 6, 1)])
    r = IE.score_item(removed, render(unrelated))
    assert r["metrics"]["unrelated"] and r["sample"] == 1.0


def test_style_and_action_name_preservation_second():
    s = two_objects()
    t = Scene(objects=[replace(o, hollow=True) for o in s.objects])
    style = item_of("style", s, t, {"op": "style", "style": "outline"})
    wrong_objects = Scene(objects=[replace(o, shape="star", color="green", cx=1 - o.cx) for o in t.objects])
    r = IE.score_item(style, render(wrong_objects))
    s1, quality, preservation = r["metrics"]["raw_scores"]
    assert preservation < quality
    assert r["scores"] == {"Style Fidelity": s1, "Content Preservation": min(preservation, s1),
                           "Rendering Quality": min(quality, s1)}
    # action: moved right but grown a size band, so its identity is only partly kept
    t = Scene(objects=[Obj.at_cell("circle", "red", 2, 0), s.objects[1]])
    move = item_of("action", s, t, {"op": "action", "action": "move", "index": 0})
    grown = Scene(objects=[replace(t.objects[0], size=0.3375), s.objects[1]])
    r = IE.score_item(move, render(grown))
    s1, quality, identity = r["metrics"]["raw_scores"]
    assert identity < quality and s1 >= identity, r
    assert r["scores"] == {"Action Fidelity": s1, "Identity Preservation": min(identity, s1),
                           "Visual & Anatomical Coherence": min(quality, s1)}


def test_compose_with_one_op_done_scores_two():
    s = two_objects()
    t = Scene(objects=[replace(s.objects[1], color="green")])
    details = {"op": "compose", "ops": [{"op": "remove", "index": 0, "object": s.objects[0].__dict__},
                                        {"op": "adjust", "attribute": "color", "index": 1, "from": "blue",
                                         "to": "green"}]}
    item = item_of("compose", s, t, details)
    assert IE.score_item(item, render(t))["sample"] == 5.0
    r = IE.score_item(item, render(Scene(objects=[s.objects[1]])))  # removed, not recoloured
    assert compliance(r) == 2 and r["metrics"]["op_status"] == ["full", "none"]


def test_style_background_and_extract_partials():
    s = two_objects()
    style = item_of("style", s, Scene(objects=[replace(o, hollow=True) for o in s.objects]),
                    {"op": "style", "style": "outline"})
    half_hollow = Scene(objects=[replace(s.objects[0], hollow=True), s.objects[1]])
    assert compliance(IE.score_item(style, render(half_hollow))) == 3
    bg = item_of("background", s, Scene(objects=s.objects, background="teal"),
                 {"op": "background", "from": "gray", "to": "teal"})
    assert IE.score_item(bg, render(bg.target))["sample"] == 5.0
    assert compliance(IE.score_item(bg, render(Scene(objects=s.objects, background="khaki")))) == 3
    centred = Obj(shape="circle", color="red", cx=0.5, cy=0.5, size=s.objects[0].size)
    ex = item_of("extract", s, Scene(objects=[centred]), {"op": "extract", "index": 0, "object": {}})
    r = IE.score_item(ex, render_on(ex.target, (255, 255, 255)))
    assert r["sample"] == 5.0 and r["metrics"]["purity"] == 1.0
    r = IE.score_item(ex, render(Scene(objects=[centred])))  # right object, but not on white
    assert compliance(r) == 3 and r["scores"]["Mask Precision"] == 1


def test_bad_input():
    s = two_objects()
    item = item_of("adjust", s, s, {"op": "adjust", "attribute": "color", "index": 0, "from": "red", "to": "red"})
    with pytest.raises(ValueError, match="square"):
        IE.score_item(item, np.zeros((64, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        IE.score_item(item, np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="edit_type"):
        IE.score_item(replace(item, edit_type="paint"), render(s))


# -----------------------------------------------------------------------------
# Aggregation and files


def test_aggregation_follows_imgedit():
    rows = [{"key": str(i), "edit_type": t, "sample": v}
            for i, (t, v) in enumerate([("add", 5.0), ("add", 4.0), ("add", 4.33), ("remove", 1.0)])]
    s = IE.summarize(rows)
    assert s["types"] == {"add": 4.44, "remove": 1.0}  # round(mean, 2) per type (step2_typescore.py)
    assert s["overall"] == pytest.approx((4.44 + 1.0) / 2) and s["sample_mean"] == pytest.approx(14.33 / 4)


def test_response_text_parses_with_imgedits_step1(items):
    def step1(entry: str):  # ImgEdit Benchmark/Basic/step1_get_avgscore.py, extract_scores_and_average
        scores = [int(p[1]) for p in (line.strip().split(": ") for line in entry.splitlines())
                  if len(p) == 2 and p[1].isdigit()]
        return round(sum(scores) / len(scores), 2) if scores else None

    for item in items[:6]:
        r = IE.score_item(item, render_source(item, 64))
        assert step1(r["response"]) == r["sample"]


def test_score_folder_and_command(tmp_path, capsys):
    rows = build("imgedit", 0, 18)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "outputs"
    out.mkdir()
    for r in rows:
        render_target(EditItem.from_dict({**r, "instruction": r["prompt"]}), 128).save(out / f"{r['key']}.png")
    results, summary = IE.score_folder(tmp_path / "items.jsonl", out)
    assert summary["overall"] == 5.0 and summary["n"] == 18 and summary["errors"] == []
    os.remove(out / f"{rows[0]['key']}.png")
    assert star_main(["shapes", "score", "--suite", "imgedit", "--items", str(tmp_path / "items.jsonl"),
                      "--images", str(out), "--out", str(tmp_path / "scores")]) == 0
    assert "ShapeImgEdit overall" in capsys.readouterr().out
    written = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert written["images_scored"] == 18 and len(written["errors"]) == 1 and written["overall"] < 5.0
    for name in ("result.json", "average_score.json", "typescore.json", "results.jsonl"):
        assert (tmp_path / "scores" / name).exists()
    assert json.loads((tmp_path / "scores" / "average_score.json").read_text())[rows[0]["key"]] == 1.0
    (tmp_path / "bad.jsonl").write_text('{"key": "0", "source": {}}\n')
    with pytest.raises(ValueError, match="line 1 of"):
        IE.read_items(tmp_path / "bad.jsonl")


def test_vocab_has_the_nine_types():
    assert set(IE.SUBSCORE_NAMES) == set(EDIT_TYPES) == set(IE.EDIT_TYPES) and len(EDIT_TYPES) == 9
