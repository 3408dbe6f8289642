"""`star eval shapes`: every suite end to end on the tiny random model (files, counts, summary arithmetic), the
oracle ceiling through the same code path (a fake pipeline returning ground-truth renders scores geneval 1.0,
imgedit 5.0, wise 1.0, vqa 1.0), resuming, error accounting and the CLI's errors.

Tolerance: scores are compared exactly except sums of floats (1e-9); resumed images are compared pixel for pixel.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from star.cli import main as cli_main
from star.eval_shapes import EvalConfig, _check_run, evaluate, take_per_group, wise_overall
from star.pipeline import STARPipeline
from star.shapes.cli_prompts import build
from star.shapes.edits import EditItem, render_target
from star.shapes.render import render
from star.shapes.sample import geneval_reference_scene
from star.shapes.scene import Scene
from star.shapes.text import geneval_prompts



QUIET = dict(log=lambda msg: None)


class OraclePipeline:
    """Ground truth through the pipeline interface: reference-scene renders for prompts (GenEval and ShapeWISE),
    the target render for edits, the true answer for questions."""

    resolution = 128

    def __init__(self, fail=lambda prompt: False):
        self.spec = {m["prompt"]: m for m in geneval_prompts()}
        self.spec.update({w["Prompt"]: w["spec"] for w in build("wise", 0, 200)})
        self.edits, self.answers = {}, {}
        for r in build("imgedit", 0, 200):
            item = EditItem.from_dict({**r, "instruction": r["prompt"]})
            self.edits[(r["prompt"], render(item.source, self.resolution).tobytes())] = item
        for r in build("vqa", 0, 3):
            self.answers[(r["question"], render(Scene.from_dict(r["scene"]), self.resolution).tobytes())] = r["answer"]
        self.rng = np.random.default_rng(0)
        self.fail = fail

    def text_to_image(self, prompt, *, num_images=1, reasoning=False, **sampling):
        if any(self.fail(p) for p in prompt):
            raise RuntimeError("boom")
        images = [render(geneval_reference_scene(self.spec[p], self.rng, split="eval"), self.resolution)
                  for p in prompt for _ in range(num_images)]
        return SimpleNamespace(images=images, answers=[self.spec[p]["prompt"] for p in prompt] if reasoning else None)

    def edit(self, image, prompt, **sampling):
        return SimpleNamespace(images=[render_target(self.edits[(p, im.tobytes())], self.resolution)
                                       for im, p in zip(image, prompt)])

    def understand(self, image, prompt, **kwargs):
        return [self.answers[(q, im.tobytes())] for im, q in zip(image, prompt)]


def test_oracle_pipeline_reaches_the_ceiling_through_the_same_code(tmp_path):
    pipe = OraclePipeline()
    s = evaluate(pipe, EvalConfig(suite="geneval", out=tmp_path / "g", limit=2, images_per_prompt=2), **QUIET)
    assert s["overall"] == 1.0 and set(s["tasks"].values()) == {1.0} and len(s["tasks"]) == 6
    assert s["counts"]["scored"] == s["counts"]["expected"] == 24 and s["counts"]["errors"] == 0
    s = evaluate(pipe, EvalConfig(suite="imgedit", out=tmp_path / "e", limit=1), **QUIET)
    assert s["overall"] == 5.0 and len(s["tasks"]) == 9 and set(s["tasks"].values()) == {5.0}
    s = evaluate(pipe, EvalConfig(suite="wise", out=tmp_path / "w", limit=1, reasoning=True), **QUIET)
    assert s["overall"] == pytest.approx(1.0) and len(s["tasks"]) == 6
    assert s["scores"]["answer_accuracy"] == 1.0, "the oracle's reasoning answer is the target prompt"
    evaluate(pipe, EvalConfig(suite="wise", out=tmp_path / "w2", limit=2, reasoning=True), **QUIET)
    first = _rows(tmp_path / "w2" / "answers.jsonl")
    evaluate(pipe, EvalConfig(suite="wise", out=tmp_path / "w2", limit=1, reasoning=True), **QUIET)
    assert _rows(tmp_path / "w2" / "answers.jsonl") == first, "a smaller --limit keeps the other images' answers"
    s = evaluate(pipe, EvalConfig(suite="vqa", out=tmp_path / "v", limit=3), **QUIET)
    assert s["overall"] == 1.0 and s["counts"]["questions"] == s["counts"]["scored"] > 10


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def tiny_model_dir(make_star, tmp_path):
    folder = tmp_path / "star"
    make_star(max_prompt_tokens=128).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("suite", ["geneval", "imgedit", "vqa", "wise", "wise-reasoning"])
def test_suite_end_to_end_on_the_tiny_model(suite, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    name = suite.removesuffix("-reasoning")
    args = ["eval", "shapes", "--suite", name, "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out),
            "--limit", "2", "--images-per-prompt", "2", "--max-new-tokens", "4", "--batch-size", "5", "--quiet"]
    args += [] if name == "vqa" else ["--top-k", "8", "--guidance-scale", "2"]
    args += ["--guidance-after-change", "1.5"] if name == "imgedit" else []
    assert cli_main(args + (["--reasoning"] if suite.endswith("reasoning") else [])) == 0
    assert "overall" in capsys.readouterr().out
    s = _summary(out)
    c = s["counts"]
    assert s["suite"] == name and s["model"] == str(tiny_model_dir.resolve()) and s["resolution"] == 16
    assert s["sampling"]["effective"] == ({"decoding": "greedy"} if name == "vqa" else {
        "guidance_scale": 2.0, "top_k": 8, "top_p": 0.9, "temperature": 1.0,
        **({"guidance_after_change": 1.5} if name == "imgedit" else {})})
    assert c["errors"] == 0 and c["present_before"] == 0
    assert c["generated"] == c["found"] == c["scored"] == c["expected"], "every item generated and scored"
    assert set(s["in_distribution"]) == {"overall", "n"}
    assert s["in_distribution"]["n"] + s["heldout"]["n"] == c["scored"]
    assert (out / "report.md").read_text().startswith(f"# ShapeWorld eval: {name}")
    assert Image.open(out / "grid.png").size[0] > 128
    if name == "geneval":
        assert c["expected"] == 6 * 2 * 2 and s["overall"] == pytest.approx(np.mean(list(s["tasks"].values())))
        results = _rows(out / "results.jsonl")
        assert len(results) == c["scored"] and all((out / r["filename"]).is_file() for r in results)
        meta = json.loads((out / results[0]["filename"]).parent.parent.joinpath("metadata.jsonl").read_text())
        assert meta["prompt"] == results[0]["prompt"]
        for tag, (correct, total) in s["task_counts"].items():
            assert total == 4 and s["tasks"][tag] == correct / total
    elif name == "imgedit":
        keys = [r["key"] for r in _rows(out / "items.jsonl")]
        assert len(keys) == c["expected"] == 9 * 2 and all((out / "images" / f"{k}.png").is_file() for k in keys)
        assert sorted(json.loads((out / "scores" / "average_score.json").read_text())) == sorted(keys)
        samples = json.loads((out / "scores" / "average_score.json").read_text())
        for flag, split in ((False, "in_distribution"), (True, "heldout")):   # the splits, recomputed by hand
            by_type = {}
            for item in _rows(out / "items.jsonl"):
                if item["heldout"] == flag:
                    by_type.setdefault(item["edit_type"], []).append(samples[item["key"]])
            expected = np.mean([round(float(np.mean(v)), 2) for v in by_type.values()]) if by_type else None
            assert s[split]["overall"] == pytest.approx(expected), split
        assert s["overall"] == pytest.approx(np.mean(list(s["tasks"].values())))
        assert all(1.0 <= v <= 5.0 for v in s["tasks"].values())
    elif name == "vqa":
        answers = _rows(out / "answers.jsonl")
        assert len(answers) == c["questions"] == c["scored"] and {a["scene_id"] for a in answers} == {0, 1}
        assert [a["id"] for a in answers] == sorted(a["id"] for a in answers)
        assert s["overall"] == sum(k for k, _ in s["task_counts"].values()) / c["questions"]
        by_family = {}
        for a in answers:                    # chance level: each family's most common answer, image unseen
            by_family.setdefault(a["family"], []).append(a["answer"])
        majority = sum(max(Counter(v).values()) for v in by_family.values()) / len(answers)
        assert s["blind_baseline"]["overall"] == pytest.approx(majority)
        sizes = {a["objects"] for a in answers}
        assert sorted(s["by_objects"]) == sorted(map(str, sizes))
        for n, part in s["by_objects"].items():
            mine = [a for a in answers if a["objects"] == int(n)]
            assert part["n"] == len(mine) and part["overall"] == sum(a["correct"] for a in mine) / len(mine)
    else:
        scores = _rows(out / "scores.jsonl")
        assert len(scores) == c["expected"] == 6 * 2 and all((out / "images" / f"{r['prompt_id']}.png").is_file()
                                                             for r in scores)
        assert s["overall"] == pytest.approx(wise_overall(s["tasks"]))
        if suite.endswith("reasoning"):
            answers = _rows(out / "answers.jsonl")
            assert s["reasoning"] and len(answers) == 12 and all(isinstance(a["answer"], str) for a in answers)
            assert s["scores"]["answers_recorded"] == 12
        else:
            assert not (out / "answers.jsonl").exists()


def test_resume_regenerates_only_the_missing_images_identically(make_star, tmp_path):
    pipe = STARPipeline(make_star())
    cfg = EvalConfig(suite="geneval", out=tmp_path / "g", limit=1, images_per_prompt=2, batch_size=4)
    first = evaluate(pipe, cfg, **QUIET)
    victim = tmp_path / "g" / "images" / "00007" / "samples" / "0001.png"    # one image of a batched prompt
    before = np.asarray(Image.open(victim))
    victim.unlink()
    again = evaluate(pipe, cfg, **QUIET)
    assert again["counts"]["generated"] == 1 and again["counts"]["present_before"] == first["counts"]["expected"] - 1
    assert np.array_equal(np.asarray(Image.open(victim)), before), "per-image seeds: alone == in a batch"
    assert again["tasks"] == first["tasks"]
    with pytest.raises(ValueError, match="other settings.*seed: 0 -> 1"):
        evaluate(pipe, EvalConfig(suite="geneval", out=tmp_path / "g", limit=1, seed=1), **QUIET)


def test_vqa_answers_are_a_diffable_file_that_only_the_base_determines(make_star, tmp_path):
    """Two models that share the frozen base but differ in every trained part answer identically, byte for byte."""
    for seed in (0, 1):
        cfg = EvalConfig(suite="vqa", out=tmp_path / f"v{seed}", limit=1, max_new_tokens=3)
        evaluate(STARPipeline(make_star(seed=seed)), cfg, **QUIET)
    assert (tmp_path / "v0" / "answers.jsonl").read_bytes() == (tmp_path / "v1" / "answers.jsonl").read_bytes()


def test_failed_items_are_counted_and_scored_wrong_never_dropped(tmp_path):
    prompts = take_per_group(geneval_prompts(), lambda m: m["tag"], 1)
    pipe = OraclePipeline(fail=lambda p: p == prompts[2]["prompt"])          # the counting prompt always fails
    s = evaluate(pipe, EvalConfig(suite="geneval", out=tmp_path / "g", limit=1, images_per_prompt=2), **QUIET)
    c = s["counts"]
    assert c["errors"] == 1 and c["scored"] == c["expected"] == 12 and c["generated"] == c["found"] == 10
    assert s["tasks"]["counting"] == 0.0 and s["tasks"]["colors"] == 1.0
    assert s["errors"][0]["error"] == "RuntimeError: boom"
    with pytest.raises(RuntimeError, match="boom"):                          # nothing works: fail loudly
        evaluate(OraclePipeline(fail=lambda p: True), EvalConfig(suite="wise", out=tmp_path / "w", limit=1), **QUIET)


def test_cli_errors_are_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("star.commands.DEFAULT_MODEL", tmp_path / "not-installed")      # a package without its model
    assert cli_main(["eval", "shapes", "--suite", "geneval", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no default model is installed" in err and "--model" in err
    with pytest.raises(ValueError, match="reasoning applies to the text-to-image suites"):
        EvalConfig(suite="vqa", out=tmp_path, reasoning=True)
    with pytest.raises(ValueError, match="guidance_after_change applies to editing"):
        EvalConfig(suite="geneval", out=tmp_path, guidance_after_change=1.5)
    # bad sampling values are refused before anything is written (a run.json would block the corrected rerun)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        EvalConfig(suite="geneval", out=tmp_path / "neg", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0 and finite"):
        EvalConfig(suite="geneval", out=tmp_path / "nan", temperature=float("nan"))
    with pytest.raises(ValueError, match="vqa answers greedily"):
        EvalConfig(suite="vqa", out=tmp_path / "vqa", top_k=8)
    (tmp_path / "file").write_text("")
    assert cli_main(["eval", "shapes", "--suite", "geneval", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; pass an output folder" in capsys.readouterr().err
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "run.json").write_text('{"suite": "geneval"')
    with pytest.raises(ValueError, match="run.json is not valid JSON.*cannot be resumed"):
        _check_run(EvalConfig(suite="geneval", out=tmp_path / "cut"), SimpleNamespace(), 16)
    assert wise_overall({"Cultural": 1.0, "Time": 0.0, "Space": 0.0, "Biology": 0.0, "Physics": 0.0,
                         "Chemistry": 0.0}) == pytest.approx(0.4)
