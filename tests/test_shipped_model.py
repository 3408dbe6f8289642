"""The shipped ShapeWorld STAR model (star/assets/star-shapes): the default of `star generate`, `edit`, `understand`.

It is the `shapes` recipe's output, packaged by scripts/ship_model.py (fp16 weights, base inside, and its own
tokenizer in `vq/`: the one its codes came from, which is not today's default tokenizer star/assets/vq-shapes).
These tests check that it loads, is the CLI default, understands exactly like its own base folder, and draws
ShapeWorld scenes (objects the exact parser finds), not noise.
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


def test_shipped_model_is_the_default_of_generate_edit_and_understand(tmp_path, capsys):
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["base"] == "base" and config["vq"] == "vq"
    own, default = (json.loads(p.read_text()) for p in (DEFAULT_MODEL / "vq" / "config.json",
                                                         DEFAULT_MODEL.parent / "vq-shapes" / "config.json"))
    assert own["codebook_size"] == 512 and default["codebook_size"] == 2048, "the model keeps the tokenizer it learnt"
    assert cli_main(["generate", "a photo of a red circle", "-o", str(tmp_path / "g.png"), "--seed", "0"]) == 0
    image = Image.open(tmp_path / "g.png")
    assert image.size == (128, 128) and image.mode == "RGB"
    assert cli_main(["edit", str(tmp_path / "g.png"), "make the circle blue", "-o", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "e.png").size == (128, 128)
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


def test_shipped_model_draws_scenes_the_parser_reads():
    pipe = STARPipeline.from_pretrained(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    prompts = ["a photo of a red circle", "a photo of a blue square and a yellow star", "a photo of two triangles",
               "a photo of a green cross"]
    images = pipe.text_to_image(prompts, seed=0).images
    found = [len(parse(im).objects) for im in images]
    assert sum(n > 0 for n in found) >= 3, f"objects found per image: {found}"
