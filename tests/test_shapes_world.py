"""ShapeWorld generators: samplers, held-out split, GenEval prompts and reference scenes, captions, VQA, WISE, edits,
and the `star shapes ...` commands. Geometry is checked with scene-level predicates (a perfect detector), not pixels.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from star.cli import main
from star.data.records import read_records
from star.shapes import vocab
from star.shapes.edits import (
    EDIT_TYPES, EXTRACT_BACKDROP, IMGEDIT_COUNTS, EditImpossible, EditItem, imgedit_items, make_edit, random_edit,
    render_target, type_counts,
)
from star.shapes.sample import (
    HELDOUT_COLOR_SHAPE, HELDOUT_RELATIONS, POSITION_MARGIN, canonical_relation, geneval_reference_scene,
    is_aligned_scene, is_heldout, layout_ok, random_scene,
)
from star.shapes.scene import Obj, Scene, box_gap, relation_margin, relative_position
from star.shapes.text import (
    FACTS, GENEVAL_TAGS, WISE_CATEGORIES, caption, geneval_prompts, in_reading_order, metadata_for_scene, paraphrases,
    prompt_for_scene, random_geneval_metadata, reading_order, text_vocabulary, vqa_questions, wise_answer_prompt,
    wise_fact_qa, wise_prompts, words,
)

NUM = {"one": 1, "two": 2, "three": 3, "four": 4}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------------
# An independent perfect-detector GenEval judge (what geneval.py must agree with on ground truth)


def geneval_correct(scene: Scene, meta: dict) -> bool:
    detected: dict[str, list[Obj]] = {}
    for o in scene.objects:
        detected.setdefault(o.shape, []).append(o)
    groups = []
    for req in meta["include"]:
        found = detected.get(req["class"], [])[: req["count"]]
        if len(found) < req["count"]:
            return False
        if "color" in req and sum(o.color == req["color"] for o in found) < req["count"]:
            return False
        if "position" in req:
            rel, g = req["position"]
            if any(rel not in relative_position(o.box(), t.box()) for o in found for t in groups[g]):
                return False
        groups.append(found)
    return all(len(detected.get(r["class"], [])) < r["count"] for r in meta.get("exclude", []))


def expected_prompt(meta: dict) -> str:
    """GenEval's templates, re-derived from the metadata alone."""
    art = lambda w: ("an " if w[0] in "aeiou" else "a ") + w  # noqa: E731
    inc = meta["include"]
    tag = meta["tag"]
    if tag == "single_object":
        return f"a photo of {art(inc[0]['class'])}"
    if tag == "two_object":
        return f"a photo of {art(inc[0]['class'])} and {art(inc[1]['class'])}"
    if tag == "counting":
        cls = inc[0]["class"]
        plural = cls + ("es" if cls.endswith("s") else "s")
        return f"a photo of {['', 'one', 'two', 'three', 'four'][inc[0]['count']]} {plural}"
    if tag == "colors":
        return f"a photo of {art(inc[0]['color'])} {inc[0]['class']}"
    if tag == "position":
        return f"a photo of {art(inc[1]['class'])} {inc[1]['position'][0]} {art(inc[0]['class'])}"
    return f"a photo of {art(inc[0]['color'])} {inc[0]['class']} and {art(inc[1]['color'])} {inc[1]['class']}"


# ----------------------------------------------------------------------------------------------------------------
# Samplers


def test_samplers_are_deterministic():
    assert random_scene(rng(5)).to_json() == random_scene(rng(5)).to_json()
    assert random_scene(rng(5), aligned=False).to_json() == random_scene(rng(5), aligned=False).to_json()
    assert random_scene(rng(5)).to_json() != random_scene(rng(6)).to_json()
    assert geneval_prompts() == geneval_prompts()
    assert wise_prompts() == wise_prompts()
    assert [i.to_dict() for i in imgedit_items(20, 3)] == [i.to_dict() for i in imgedit_items(20, 3)]
    s = random_scene(rng(1), n_objects=3)
    assert vqa_questions(s, rng(2)) == vqa_questions(s, rng(2))
    assert paraphrases(s, rng(2)) == paraphrases(s, rng(2))


def test_aligned_scenes_sit_on_the_grid_with_a_gap():
    r = rng(0)
    for _ in range(300):
        s = random_scene(r, sizes=tuple(vocab.SIZE_BANDS), n_objects=int(r.integers(1, 4)))
        assert is_aligned_scene(s)
        g = vocab.GRID
        for o in s.objects:
            k = vocab.CELLS_PER_SIZE[o.size_band]
            assert (o.cx * g - k / 2) == pytest.approx(round(o.cx * g - k / 2))  # block starts on a cell edge
            x0, y0, x1, y1 = o.box()
            assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                assert box_gap(a.box(), b.box()) >= 1 / g - 1e-9  # at least one empty cell between blocks


def test_unaligned_scenes_respect_bands_gap_and_margin():
    r = rng(1)
    for _ in range(200):
        s = random_scene(r, aligned=False, sizes=tuple(vocab.SIZE_BANDS))
        for o in s.objects:
            lo, hi = vocab.SIZE_BANDS[o.size_band]
            assert lo <= o.size <= hi
            assert min(o.box()) >= 0.02 - 1e-9 and max(o.box()) <= 0.98 + 1e-9
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                assert box_gap(a.box(), b.box()) >= 0.03 - 1e-9


def test_impossible_requests_fail_clearly():
    with pytest.raises(ValueError, match="could not place"):
        random_scene(rng(0), n_objects=20, sizes=("large",))
    with pytest.raises(ValueError, match="excludes"):
        geneval_reference_scene({"include": [{"class": "star", "count": 2}], "exclude": [{"class": "star",
                                 "count": 2}]}, rng(0))
    with pytest.raises(ValueError, match="no aligned scene"):
        geneval_reference_scene({"include": [{"class": "star", "count": 5}], "prompt": "five large stars"}, rng(0),
                                sizes=("large",))


# ----------------------------------------------------------------------------------------------------------------
# GenEval prompts and reference scenes


def test_geneval_prompt_counts_and_templates():
    prompts = geneval_prompts()
    tags = Counter(p["tag"] for p in prompts)
    assert tags["single_object"] == 7
    assert tags["two_object"] <= 42 and tags["counting"] <= 21 and tags["colors"] <= 70
    assert tags["position"] <= 100 and 90 <= tags["color_attr"] <= 100
    assert tags["counting"] == 21  # 100 draws cover all 7 × {2, 3, 4}
    assert set(tags) == set(GENEVAL_TAGS)
    assert len({json.dumps(p, sort_keys=True) for p in prompts}) == len(prompts)  # de-duplicated
    for p in prompts:
        assert p["prompt"] == expected_prompt(p)
        assert list(p)[0] == "tag" and list(p)[-1] == "prompt"  # GenEval's key order
        if p["tag"] == "counting":
            assert p["exclude"] == [{"class": p["include"][0]["class"], "count": p["include"][0]["count"] + 1}]
        if p["tag"] in ("two_object", "position", "color_attr"):
            assert p["include"][0]["class"] != p["include"][1]["class"]
        if p["tag"] == "color_attr":
            assert p["include"][0]["color"] != p["include"][1]["color"]


def test_geneval_known_strings():
    by_prompt = {p["prompt"]: p for p in geneval_prompts(seed=43, n=100)}
    assert "a photo of an arrow" in by_prompt and "a photo of a circle" in by_prompt
    meta = random_geneval_metadata(rng(0), "position", split="eval")
    assert meta["include"][1]["position"][1] == 0 and "position" not in meta["include"][0]
    # exact templates of the spec's examples
    from star.shapes.text import _color_attr, _colors, _counting, _position
    assert _colors("circle", "red")["prompt"] == "a photo of a red circle"
    assert _colors("arrow", "orange")["prompt"] == "a photo of an orange arrow"
    assert _counting("star", 3)["prompt"] == "a photo of three stars"
    assert _counting("cross", 2)["prompt"] == "a photo of two crosses"
    pos = _position("cross", "left of", "arrow")
    assert pos["prompt"] == "a photo of a cross left of an arrow"
    assert pos["include"] == [{"class": "arrow", "count": 1},
                              {"class": "cross", "count": 1, "position": ["left of", 0]}]
    assert _color_attr("square", "blue", "arrow", "white")["prompt"] == "a photo of a blue square and a white arrow"


def _check_reference(scene: Scene, meta: dict, aligned: bool) -> None:
    assert geneval_correct(scene, meta), meta["prompt"]
    assert len(scene.objects) == sum(r["count"] for r in meta["include"])  # no extra objects
    for r in meta["include"]:
        if "position" in r:
            rel, g = r["position"]
            for a in (o for o in scene.objects if o.shape == r["class"]):
                for b in (o for o in scene.objects if o.shape == meta["include"][g]["class"]):
                    assert relative_position(a.box(), b.box()) == {rel}
                    assert relation_margin(a.box(), b.box(), rel) >= POSITION_MARGIN
    assert layout_ok(scene.objects, aligned)  # nothing touching, inside the image


def test_every_geneval_prompt_has_a_reference_scene():
    r = rng(0)
    for meta in geneval_prompts():
        _check_reference(geneval_reference_scene(meta, r, split="eval"), meta, True)
        if not is_heldout(meta):
            scene = geneval_reference_scene(meta, r, split="train")
            _check_reference(scene, meta, True)
            assert not is_heldout(scene)
    for meta in geneval_prompts()[::4]:
        _check_reference(geneval_reference_scene(meta, r, aligned=False, split="eval"), meta, False)


def test_prompt_for_scene_is_true_and_tag_compatible():
    r = rng(2)
    for _ in range(300):
        s = random_scene(r, n_objects=int(r.integers(1, 3)))
        meta = metadata_for_scene(s, r)
        assert meta is not None and geneval_correct(s, meta)
        assert meta["prompt"] == expected_prompt(meta)
    three = Scene(objects=[Obj.at_cell("star", "red", c, 0) for c in (0, 3, 6)])
    assert metadata_for_scene(three, r)["prompt"] == "a photo of three stars"
    mixed = Scene(objects=[Obj.at_cell("star", "red", 0, 0), Obj.at_cell("circle", "red", 3, 0),
                           Obj.at_cell("cross", "red", 6, 0)])
    assert metadata_for_scene(mixed, r) is None and prompt_for_scene(mixed, r) == caption(mixed)


def test_t2i_phrase_order_follows_the_image_or_the_draw():
    from star.shapes.cli_data import generate_records

    def first_phrase_is_first_object(record) -> bool:
        scene = Scene.from_dict(record["meta"]["scene"])
        return record["text"].split(" and ")[0].endswith(" " + scene.objects[reading_order(scene)[0]].shape)

    for order, expect in (("reading", {True}), ("drawn", {True, False})):
        pairs = [r for r in generate_records("t2i", 150, rng(5), resolution=32, phrase_order=order)
                 if r["meta"]["tag"] in ("two_object", "color_attr")]
        assert len(pairs) > 30
        assert {first_phrase_is_first_object(r) for r in pairs} == expect, order
    # reordering keeps the prompt true of its scene and its tag's template; other tags are untouched
    upper, lower = Obj.at_cell("star", "red", 0, 0), Obj.at_cell("circle", "blue", 4, 4)
    scene = Scene(objects=[lower, upper])
    meta = random_geneval_metadata(rng(0), "color_attr")
    meta = dict(meta, include=[{"class": "circle", "count": 1, "color": "blue"},
                               {"class": "star", "count": 1, "color": "red"}])
    meta["prompt"] = expected_prompt(meta)
    swapped = in_reading_order(meta, scene)
    assert swapped["prompt"] == "a photo of a red star and a blue circle" and geneval_correct(scene, swapped)
    assert in_reading_order(swapped, scene) == swapped
    counting = random_geneval_metadata(rng(0), "counting")
    assert in_reading_order(counting, scene) is counting
    with pytest.raises(ValueError, match="named nowhere"):
        in_reading_order(swapped, Scene(objects=[Obj.at_cell("cross", "red", 0, 0), lower]))
    with pytest.raises(ValueError, match="phrase_order"):
        next(generate_records("t2i", 1, rng(0), phrase_order="sorted"))


def test_t2i_on_white_records_draw_extracts_backdrop_and_say_so():
    from star.shapes.cli_data import generate_records
    from star.shapes.edits import EXTRACT_BACKDROP, centred

    records = list(generate_records("t2i", 60, rng(7), resolution=64, white_frac=0.5))
    white = [r for r in records if r["meta"]["tag"] == "on_white"]
    assert 15 <= len(white) <= 45                                   # about half
    centred_ones = 0
    for r in white:
        scene = Scene.from_dict(r["meta"]["scene"])
        pixels = np.asarray(r["image"])
        assert r["text"] == caption(scene) + " on a white background"
        assert tuple(pixels[0, 0]) == EXTRACT_BACKDROP and tuple(pixels[-1, -1]) == EXTRACT_BACKDROP
        assert 1 <= len(scene.objects) <= 2 and not is_heldout(scene)
        for o in scene.objects:                                     # drawn in its own colour; white would vanish
            assert o.color != "white"
            assert tuple(pixels[int(o.cy * 64), int(o.cx * 64)]) == vocab.COLORS[o.color]
        centred_ones += len(scene.objects) == 1 and scene.objects[0] == centred(scene.objects[0], True)
    assert centred_ones >= 5                                        # extract's placement is among them
    assert all(not r["text"].endswith("white background") for r in records if r not in white)


def _attrs(o: Obj) -> tuple:
    return o.shape, o.color, o.size_band, o.hollow, o.orientation


def test_t2i_varied_records_caption_the_sizes_outlines_and_turns_edits_draw(tmp_path, capsys):
    from star.shapes.cli_data import generate_records
    from star.shapes.parse import parse

    records = list(generate_records("t2i", 80, rng(8), white_frac=0.2, varied_frac=0.5))
    varied = [r for r in records if r["meta"]["tag"] == "varied"]
    assert 25 <= len(varied) <= 55 and 5 <= sum(r["meta"]["tag"] == "on_white" for r in records) <= 30
    scenes = [Scene.from_dict(r["meta"]["scene"]) for r in varied]
    objects = [o for s in scenes for o in s.objects]
    assert {o.size_band for o in objects} == set(vocab.SIZE_BANDS)
    assert any(o.hollow for o in objects) and not all(o.hollow for o in objects)
    assert any(o.orientation != vocab.ORIENTATIONS[o.shape][0] for o in objects)
    for r, scene in zip(varied, scenes):
        assert r["text"] == caption(scene) and not is_heldout(scene)
        assert all(o.hollow == scene.objects[0].hollow for o in scene.objects)   # a whole scene is in outline
        graph = parse(r["image"])                                               # the image is the caption's scene
        drawn = Counter((o.shape, o.color, o.size_band, o.hollow, o.orientation) for o in graph.objects)
        assert drawn == Counter(_attrs(o) for o in scene.objects) and graph.background == scene.background, r["text"]
    args = ["shapes", "dataset", "--out", str(tmp_path / "d"), "--kind", "t2i", "--white-frac", "0.6"]
    assert main([*args, "--varied-frac", "0.6"]) == 2 and "sum <= 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------------------------
# Held-out split


def test_heldout_split_shape():
    assert len(HELDOUT_COLOR_SHAPE) == 7 and {s for _, s in HELDOUT_COLOR_SHAPE} == set(vocab.CLASSES)
    assert len(HELDOUT_RELATIONS) == 6
    assert canonical_relation("square", "right of", "circle") == ("circle", "left of", "square")
    left = Scene(objects=[Obj.at_cell("circle", "red", 0, 3), Obj.at_cell("square", "red", 4, 3)])
    right = Scene(objects=[Obj.at_cell("circle", "red", 4, 3), Obj.at_cell("square", "red", 0, 3)])
    assert is_heldout(left) and not is_heldout(right)  # (circle left of square) ≡ (square right of circle)
    assert is_heldout(Scene(objects=[Obj.at_cell("circle", "purple", 0, 0)]))
    from star.shapes.text import _colors, _position
    assert is_heldout(_position("circle", "left of", "square")) and is_heldout(_position("square", "right of",
                                                                                         "circle"))
    assert not is_heldout(_position("square", "left of", "circle"))
    assert is_heldout(_colors("circle", "purple")) and not is_heldout(_colors("circle", "red"))


def _text_mentions_heldout(text: str) -> bool:
    for color, shape in HELDOUT_COLOR_SHAPE:
        if re.search(rf"\b{color} {shape}", text):
            return True
    rels = "|".join(["left of", "right of", "above", "below", "to the left of", "to the right of"])
    for a, rel, b in re.findall(rf"\b({'|'.join(vocab.CLASSES)}) ({rels}) (?:an? |the )?(?:\w+ )?"
                                rf"({'|'.join(vocab.CLASSES)})\b", text):
        if a != b and canonical_relation(a, rel.removeprefix("to the "), b) in HELDOUT_RELATIONS:
            return True
    return False


def test_train_samplers_never_produce_heldout():
    r = rng(3)
    for _ in range(600):
        s = random_scene(r, n_objects=4)
        assert not is_heldout(s)
        assert not _text_mentions_heldout(caption(s))
        assert not any(_text_mentions_heldout(q["question"]) for q in vqa_questions(s, r))
    for _ in range(300):
        s = random_scene(r, n_objects=2)
        assert not any(_text_mentions_heldout(p) for p in paraphrases(s, r))
        assert not _text_mentions_heldout(prompt_for_scene(s, r))
    for _ in range(1000):
        meta = random_geneval_metadata(r, split="train")
        assert not is_heldout(meta)
    for meta in (random_geneval_metadata(r, split="train") for _ in range(300)):
        assert not is_heldout(geneval_reference_scene(meta, r, split="train"))
    for t in EDIT_TYPES:
        for _ in range(15):
            item = random_edit(r, t, split="train")
            assert not is_heldout(item) and not _text_mentions_heldout(item.instruction)
    for item in wise_prompts(split="train"):
        assert not is_heldout(item)
    with pytest.raises(ValueError, match="held-out"):
        geneval_reference_scene({"include": [{"class": "circle", "count": 1, "color": "purple"}], "prompt": "x"}, r)


def test_eval_sets_contain_and_flag_heldout():
    assert any(is_heldout(p) for p in geneval_prompts() if p["tag"] == "position")
    assert any(is_heldout(p) for p in geneval_prompts() if p["tag"] == "colors")
    assert any(is_heldout(i) for i in imgedit_items(60, 0))


# ----------------------------------------------------------------------------------------------------------------
# Captions and VQA on hand-built scenes


def test_captions_on_hand_built_scenes():
    pair = Scene(objects=[Obj.at_cell("square", "blue", 4, 3), Obj.at_cell("circle", "red", 0, 3)])
    assert caption(pair) == "a red circle left of a blue square"
    assert "a blue square right of a red circle" in paraphrases(pair, rng(0))
    stacked = Scene(objects=[Obj.at_cell("star", "green", 3, 5), Obj.at_cell("arrow", "white", 3, 1)],
                    background="khaki")
    assert caption(stacked) == "a white arrow above a green star on a khaki background"
    group = Scene(objects=[Obj.at_cell("star", "green", 0, 0), Obj.at_cell("star", "green", 3, 0),
                           Obj.at_cell("cross", "black", 0, 4, "large", hollow=True)])
    assert caption(group) == "two green stars and a large hollow black cross"
    flipped = Scene(objects=[Obj.at_cell("triangle", "red", 3, 3, orientation="down")])
    assert caption(flipped) == "a red triangle pointing down"
    for p in paraphrases(pair, rng(1)):
        assert ("left of" in p or "right of" in p) and "red circle" in p and "blue square" in p


def vqa_oracle(question: str) -> str:
    """Hand truth for the scene of test_vqa_answers: red circle (0,0), blue square (4,0), green stars (0,4),(4,4)."""
    count = {"circles": 1, "squares": 1, "stars": 2}
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return ["zero", "one", "two"][count.get(m[1], 0)]
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        return {"circle": "red", "square": "blue"}[m[1]]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return {"red": "circle", "blue": "square"}[m[1]]
    if m := re.fullmatch(r"is the (\w+) (left of|right of|above|below) the (\w+)\?", question):
        truth = {("circle", "left of", "square"), ("square", "right of", "circle")}
        return "yes" if (m[1], m[2], m[3]) in truth else "no"
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if (m[1], m[2]) in {("red", "circle"), ("blue", "square"), ("green", "star")} else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_vqa_answers():
    scene = Scene(objects=[Obj.at_cell("circle", "red", 0, 0), Obj.at_cell("square", "blue", 4, 0),
                           Obj.at_cell("star", "green", 0, 4), Obj.at_cell("star", "green", 4, 4)])
    families = Counter()
    for seed in range(60):
        for q in vqa_questions(scene, rng(seed), split="eval"):
            assert q["answer"] == vqa_oracle(q["question"]), q
            assert len(q["answer"].split()) == 1
            families[q["family"]] += 1
    assert set(families) == {"count", "color", "shape", "relation", "exist"}
    answers = {q["answer"] for s in range(60) for q in vqa_questions(scene, rng(s), split="eval")
               if q["family"] == "relation"}
    assert answers == {"yes", "no"}
    # (circle left of square) is a held-out relation: training questions never mention it, in either wording
    train_qs = {q["question"] for s in range(60) for q in vqa_questions(scene, rng(s))}
    assert not any(re.search(r"circle left of the square|square right of the circle", q) for q in train_qs)
    assert any(re.search(r"square left of the circle|circle right of the square", q) for q in train_qs)


# ----------------------------------------------------------------------------------------------------------------
# ShapeWISE


def test_wise_prompts():
    items = wise_prompts()
    assert len(items) == 200 and [i["prompt_id"] for i in items] == list(range(1, 201))
    cats = [i["Category"] for i in items]
    assert Counter(cats) == {"Cultural": 80, "Time": 33, "Space": 27, "Biology": 20, "Physics": 20, "Chemistry": 20}
    order = [c for c, _ in WISE_CATEGORIES]
    assert cats == sorted(cats, key=order.index)  # contiguous id ranges in WISE's order
    assert len({i["Prompt"] for i in items}) == 200
    r = rng(0)
    for item in items:
        assert set(item) >= {"prompt_id", "Prompt", "Explanation", "Category", "Subcategory", "spec"}
        spec = item["spec"]
        assert wise_answer_prompt(item) == spec["prompt"] == expected_prompt(spec)
        assert item["knowledge"]["answer"] in item["Explanation"].lower()
        scene = geneval_reference_scene(spec, r, split="eval")
        assert geneval_correct(scene, spec)
    train = wise_prompts(split="train")
    assert not {i["Prompt"] for i in train} & {i["Prompt"] for i in items}
    # a shape fact's prompt names the colour: one object of every class in it (knowing no fact) must not pass
    shape_items = [i for i in items if i["knowledge"]["kind"] == "shape"]
    assert shape_items
    for item in shape_items:
        color = item["spec"]["include"][0]["color"]
        hedge = Scene(objects=[Obj.at_cell(c, color, 2 * (k % 4), 2 * (k // 4)) for k, c in enumerate(vocab.CLASSES)])
        assert not geneval_correct(hedge, item["spec"]), item["Prompt"]


def test_wise_facts_use_vocabulary_answers():
    allowed = {"color": set(vocab.COLORS), "shape": set(vocab.CLASSES), "count": {"two", "three", "four"},
               "relation": {"above", "below", "left", "right"}}
    for f in FACTS:
        assert f.answer in allowed[f.kind], f
        if f.kind != "relation" and f.answer in words(f.phrase):  # allowed only as one option of a choice
            assert {w for w in words(f.phrase) if w in allowed[f.kind]} - {f.answer}, f"answer leaks into: {f}"
        if f.kind != "shape":  # no class word that a generator could draw instead of the carrier class
            assert not set(words(f.phrase)) & (set(vocab.CLASSES) | {c + "s" for c in vocab.CLASSES}), f
        if f.kind == "relation":
            assert f.relation in vocab.RELATIONS and "{a}" in f.phrase and "{b}" in f.phrase
    qa = wise_fact_qa()
    assert len(qa) == len(FACTS) and {"question": "what colour is a stop sign?", "answer": "red",
                                      "category": "Cultural"} in qa


# ----------------------------------------------------------------------------------------------------------------
# Edits


def _same_except(src: Scene, tgt: Scene, changed: set[int]) -> None:
    for i, (a, b) in enumerate(zip(src.objects, tgt.objects)):
        if i not in changed:
            assert a == b, (i, a, b)


def _check_edit(item) -> None:
    src, tgt, d = item.source, item.target, item.details
    t = item.edit_type
    if t != "extract":
        assert layout_ok(tgt.objects, True) and is_aligned_scene(tgt)
    if t != "background":
        assert tgt.background == src.background
    if t == "add":
        assert len(tgt.objects) == len(src.objects) + 1 and tgt.objects[:-1] == src.objects
        new = tgt.objects[-1]
        assert describe_words(new) <= set(words(item.instruction))
        if d["relation"]:
            ref = src.objects[d["reference"]]
            assert relative_position(new.box(), ref.box()) == {d["relation"]}
    elif t == "remove":
        i = d["index"]
        assert tgt.objects == src.objects[:i] + src.objects[i + 1:]
        assert src.objects[i].shape in item.instruction
    elif t == "replace":
        i = d["index"]
        _same_except(src, tgt, {i})
        a, b = src.objects[i], tgt.objects[i]
        assert a.shape != b.shape and (a.cx, a.cy, a.size) == (b.cx, b.cy, b.size) and b.shape in item.instruction
    elif t == "adjust":
        i = d["index"]
        _same_except(src, tgt, {i})
        a, b = src.objects[i], tgt.objects[i]
        if d["attribute"] == "color":
            assert b.color == d["to"] != a.color and (a.shape, a.cx, a.cy, a.size) == (b.shape, b.cx, b.cy, b.size)
        else:
            assert b.size_band == d["to"] != a.size_band and (a.shape, a.color) == (b.shape, b.color)
            assert abs(a.cx - b.cx) <= 1 / 16 + 1e-9 and abs(a.cy - b.cy) <= 1 / 16 + 1e-9
        assert d["to"] in item.instruction
    elif t == "background":
        assert tgt.objects == src.objects and tgt.background != src.background
        assert tgt.background in item.instruction
    elif t == "style":
        assert all(o.hollow for o in tgt.objects)
        assert [o.__class__(**{**o.__dict__, "hollow": False}) for o in tgt.objects] == src.objects
    elif t == "extract":
        (o,) = tgt.objects
        a = src.objects[d["index"]]
        assert (o.shape, o.color, o.size) == (a.shape, a.color, a.size) and o.color != "white"
        assert abs(o.cx - 0.5) <= 1 / 16 and abs(o.cy - 0.5) <= 1 / 16
        img = np.asarray(render_target(item, 64))
        assert tuple(img[0, 0]) == EXTRACT_BACKDROP and tuple(img[-1, -1]) == EXTRACT_BACKDROP
    elif t == "action":
        i = d["index"]
        _same_except(src, tgt, {i})
        a, b = src.objects[i], tgt.objects[i]
        if d["action"] == "move":
            assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= 2 / 8 - 1e-9
            assert (a.shape, a.color, a.size, a.orientation) == (b.shape, b.color, b.size, b.orientation)
            assert d["region"] in item.instruction
        else:
            assert a.orientation != b.orientation and (a.cx, a.cy, a.shape) == (b.cx, b.cy, b.shape)
    elif t == "compose":
        assert len(d["ops"]) == 2 and d["ops"][0]["index"] != d["ops"][1]["index"]
        removed = {op["index"] for op in d["ops"] if op["op"] == "remove"}
        kept = [i for i in range(len(src.objects)) if i not in removed]
        assert len(tgt.objects) == len(kept)
        changed = sum(src.objects[i] != o for i, o in zip(kept, tgt.objects))
        assert changed + len(removed) == 2


def describe_words(o: Obj) -> set[str]:
    return {o.color, o.shape}


def test_edits_change_exactly_what_they_say():
    r = rng(4)
    for t in EDIT_TYPES:
        for _ in range(25):
            item = random_edit(r, t)
            assert item.edit_type == t and item.instruction
            _check_edit(item)


def test_make_edit_on_a_given_scene_and_errors():
    scene = Scene(objects=[Obj.at_cell("circle", "red", 0, 0), Obj.at_cell("square", "blue", 0, 4)])
    item = make_edit(scene, "background", rng(0))
    assert item.source == scene and item.target.objects == scene.objects
    with pytest.raises(ValueError, match="edit_type"):
        make_edit(scene, "teleport", rng(0))
    ambiguous = Scene(objects=[Obj.at_cell("circle", "red", 0, 0), Obj.at_cell("circle", "red", 4, 4)])
    with pytest.raises(EditImpossible):
        make_edit(ambiguous, "remove", rng(0))  # no object has a unique name
    with pytest.raises(ValueError, match="held-out"):
        make_edit(Scene(objects=[Obj.at_cell("circle", "purple", 0, 0)]), "remove", rng(0))
    unaligned = random_scene(rng(1), aligned=False, n_objects=3)
    for t in EDIT_TYPES:
        try:
            it = make_edit(unaligned, t, rng(2))
        except EditImpossible:
            continue
        if t != "extract":
            assert layout_ok(it.target.objects, False)


def test_imgedit_proportions():
    assert type_counts(737) == IMGEDIT_COUNTS
    assert sum(type_counts(100).values()) == 100
    items = imgedit_items(100, 0)
    assert Counter(i.edit_type for i in items) == type_counts(100)
    for item in items:
        _check_edit(item)


def test_edit_type_weights_set_the_mix_and_bad_weights_are_refused(tmp_path):
    assert type_counts(10, {"compose": 3, "adjust": 1.5}) == {"compose": 7, "adjust": 3}
    assert type_counts(9, {t: 1 for t in EDIT_TYPES}) == {t: 1 for t in EDIT_TYPES}
    for bad in ({"compose": -1}, {"colour": 1}, {"compose": 0}, {"compose": float("inf")}):
        with pytest.raises(ValueError, match="edit type weights"):
            type_counts(5, bad)
    out = tmp_path / "hard"
    assert main(["shapes", "dataset", "--out", str(out), "--kind", "edit", "--n", "8", "--resolution", "32",
                 "--edit-types", "compose=1,action=1"]) == 0
    records = list(read_records(out))
    assert Counter(r["edit_type"] for r in records) == {"compose": 4, "action": 4}
    for rec in records:
        _check_edit(EditItem.from_dict({"source": rec["meta"]["source_scene"], "target": rec["meta"]["target_scene"],
                                        "instruction": rec["text"], "edit_type": rec["edit_type"],
                                        "details": rec["meta"]["details"]}))
    with pytest.raises(SystemExit):
        main(["shapes", "dataset", "--out", str(tmp_path / "x"), "--kind", "edit", "--edit-types", "compose"])


# ----------------------------------------------------------------------------------------------------------------
# Words


def test_every_generated_word_is_in_the_text_vocabulary():
    known = set(text_vocabulary())
    r = rng(7)
    texts = [p["prompt"] for p in geneval_prompts()]
    texts += [t for i in wise_prompts() for t in (i["Prompt"], i["Explanation"])]
    texts += [t for qa in wise_fact_qa() for t in qa.values()]
    for _ in range(200):
        s = random_scene(r, sizes=tuple(vocab.SIZE_BANDS), background=str(r.choice(list(vocab.BACKGROUNDS))))
        texts += [caption(s), prompt_for_scene(s, r)] + paraphrases(s, r)
        texts += [t for q in vqa_questions(s, r) for t in (q["question"], q["answer"])]
    texts += [random_edit(r, t).instruction for t in EDIT_TYPES for _ in range(10)]
    texts += [caption(i.target) for i in imgedit_items(50, 1)]
    missing = {w for t in texts for w in words(t)} - known
    assert not missing


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_render(tmp_path):
    out = tmp_path / "demo.png"
    assert main(["shapes", "render", "-o", str(out)]) == 0
    assert Image.open(out).size == (vocab.DEFAULT_RESOLUTION,) * 2
    spec = tmp_path / "scene.json"
    spec.write_text(Scene(objects=[Obj.at_cell("star", "red", 3, 3)]).to_json())
    assert main(["shapes", "render", "--scene", str(spec), "-r", "32", "-o", str(tmp_path / "s.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "s.png"))
    assert tuple(img[0, 0]) == vocab.BACKGROUNDS["gray"] and tuple(img[16, 16]) == vocab.COLORS["red"]
    assert main(["shapes", "render", "--random", "--seed", "3", "-r", "64", "-o", str(tmp_path / "r.png")]) == 0
    assert main(["shapes", "render", "--scene", str(tmp_path / "missing.json"), "-o", str(out)]) == 2


def test_cli_prompts(tmp_path, capsys):
    assert main(["shapes", "prompts", "--suite", "geneval", "--out", str(tmp_path / "g")]) == 0
    lines = (tmp_path / "g" / "evaluation_metadata.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == geneval_prompts()
    assert len((tmp_path / "g" / "generation_prompts.txt").read_text().splitlines()) == len(lines)
    for suite, n in (("wise", "12"), ("vqa", "3"), ("imgedit", "9")):
        assert main(["shapes", "prompts", "--suite", suite, "--n", n, "--out", str(tmp_path / f"{suite}.jsonl")]) == 0
        rows = [json.loads(x) for x in (tmp_path / f"{suite}.jsonl").read_text().splitlines()]
        assert rows and all("heldout" in row for row in rows)
    capsys.readouterr()
    assert main(["shapes", "prompts", "--suite", "wise", "--n", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_cli_dataset(tmp_path):
    out = tmp_path / "ds"
    assert main(["shapes", "dataset", "--out", str(out), "--kind", "all", "--n", "6", "--seed", "1",
                 "--resolution", "32"]) == 0
    reader = read_records(out)
    records = list(reader)
    assert reader.stats.total_skipped == 0
    assert Counter(r["kind"] for r in records) == {k: 6 for k in ("t2i", "edit", "vqa", "caption", "text_qa")}
    for rec in records:
        scene = rec.get("meta", {}).get("scene")
        if scene:
            assert not is_heldout(Scene.from_dict(scene))
        if rec["kind"] == "t2i":
            assert Image.open(rec["image"]).size == (32, 32)
    assert main(["shapes", "dataset", "--out", str(out), "--kind", "t2i", "--n", "2"]) == 2  # exists: refuse
    assert main(["shapes", "dataset", "--out", str(out), "--kind", "t2i", "--n", "2", "--overwrite"]) == 0
    assert len(list(read_records(out))) == 2
