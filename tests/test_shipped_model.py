"""The shipped ShapeWorld STAR model (star/assets/star-shapes): the default of `star generate`, `edit`, `understand`.

It is the `shapes` recipe's output, packaged by scripts/ship_model.py (fp16 weights, base inside, and its own
tokenizer in `vq/`: the one its codes came from, so a newer default tokenizer star/assets/vq-shapes never changes it).
These tests check that it loads, is the CLI default, understands exactly like its own base folder, and draws
the shapes its prompts name (read back by the exact parser).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from star.cli import main as cli_main
from star.commands import DEFAULT_MODEL
from star.pipeline import BasePipeline, STARPipeline
from star.shapes.parse import parse
from star.shapes.render import render
from star.shapes.sample import random_scene
from star.shapes.scene import Scene


def test_shipped_model_is_the_default_of_generate_edit_and_understand(tmp_path, capsys):
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["base"] == "base" and config["vq"] == "vq"
    own = json.loads((DEFAULT_MODEL / "vq" / "config.json").read_text())
    assert own["codebook_size"] == config["head"]["codebook_size"], "the model carries the tokenizer its head predicts"
    assert cli_main(["generate", "a photo of a red circle", "-o", str(tmp_path / "g.png"), "--seed", "0"]) == 0
    image = Image.open(tmp_path / "g.png")
    assert image.size == (128, 128) and image.mode == "RGB"
    assert cli_main(["edit", str(tmp_path / "g.png"), "make the circle blue", "-o", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "e.png").size == (128, 128)
    assert [(o.shape, o.color) for o in parse(Image.open(tmp_path / "e.png")).objects] == [("circle", "blue")]
    capsys.readouterr()
    assert cli_main(["understand", str(tmp_path / "g.png"), "how many circles are there?"]) == 0
    assert capsys.readouterr().out.strip(), "an answer is printed"


def test_shipped_model_understands_exactly_like_its_base_folder():
    pipe = STARPipeline.from_pretrained(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    base = BasePipeline.from_pretrained(DEFAULT_MODEL / "base", device="cpu", dtype=torch.float32,
                                        vit_max_tokens=pipe.model.config.understand_vit_max_tokens)
    rng = np.random.default_rng(0)
    images = [render(random_scene(rng), 128) for _ in range(3)]
    questions = ["what colour is the circle?", "how many shapes are there?", "is there a star?"]
    assert pipe.understand(images, questions, max_new_tokens=8) == base.understand(images, questions,
                                                                                   max_new_tokens=8)


def test_shipped_model_draws_what_the_prompt_names():
    """Judged by the GenEval rules (colours, bindings, exact counts); one of four may miss (sampling at temperature
    0.7 can flip on another CPU's rounding)."""
    from star.shapes.geneval import evaluate_image
    from star.shapes.text import _color_attr, _colors, _counting

    pipe = STARPipeline.from_pretrained(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    specs = [_colors("circle", "red"), _color_attr("square", "blue", "star", "yellow"), _counting("triangle", 2),
             _colors("cross", "green")]
    images = pipe.text_to_image([m["prompt"] for m in specs], seed=0).images
    right = [evaluate_image(im, m)["correct"] for im, m in zip(images, specs)]
    found = [[(o.shape, o.color) for o in parse(im).objects] for im in images]
    assert sum(right) >= 3, f"objects the parser found per prompt: {found}"


def test_shipped_base_answers_questions_well_above_chance():
    from star.eval_shapes import BENCHMARK_SEEDS
    from star.shapes import vqa
    from star.shapes.cli_prompts import build

    seed, _ = BENCHMARK_SEEDS["vqa"]
    rows = build("vqa", seed, 6)                                                  # 6 scenes, ~40 questions
    pipe = BasePipeline.from_pretrained(DEFAULT_MODEL / "base", device="cpu", dtype=torch.float32)
    images = {r["scene_id"]: render(Scene.from_dict(r["scene"]), 128) for r in rows}
    answers = pipe.understand([images[r["scene_id"]] for r in rows], [r["question"] for r in rows],
                              max_new_tokens=8)
    accuracy = vqa.accuracy(rows, answers)["overall"]
    blind = vqa.accuracy(rows, vqa.blind_answers(rows))["overall"]
    assert accuracy >= 0.8 and blind < 0.6, (accuracy, blind)
