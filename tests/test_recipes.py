"""`star train --recipe shapes-quick` end to end: tiny base built and trained on understanding data, a tiny VQ
trained, datasets written and pre-tokenised, generation then editing; the assembled OUT/model loads in STARPipeline
and generates; its understanding is the understanding stage's base, answer for answer; --resume skips completed
stages and an interrupted stage resumes from its checkpoint to the same weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file



@pytest.mark.slow
def test_shapes_quick_recipe_end_to_end(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from star.cli import main
    from star.data.records import read_records
    from star.pipeline import STARPipeline
    from star.training.data import load_rgb
    from star.views import vit_inputs
    from star.training.runlog import read_log

    out = tmp_path / "quick"
    assert main(["train", "--recipe", "shapes-quick", "--out", str(out)]) == 0
    for stage in ("understanding", "understanding-text", "vq-train", "generation", "editing"):
        assert (out / stage / "DONE").is_file() and read_log(out / stage / "log.jsonl"), stage
    # the editing stage also reads the pre-tokenised scenes only edits draw (white backdrop, sizes, outlines, turns)
    edit_scenes = out / "data" / "t2i-edits"
    assert {r["meta"]["tag"] for r in read_records(edit_scenes, kinds="t2i")} == {"on_white", "varied"}
    assert (edit_scenes / "codes.safetensors").is_file()
    editing_data = json.loads((out / "editing" / "config.json").read_text())["stage_options"]["data"]
    assert [d["path"] for d in editing_data[1:]] == [str(out / "data" / "t2i"), str(edit_scenes)]
    text_log = read_log(out / "understanding-text" / "log.jsonl")
    assert {r["image_share"] for r in text_log} == {0.0}, "the second understanding entry is text only"
    # ... and trains only the layers above the stack's readout: what generation reads is the image entry's, bit for
    # bit, while the base's answers come from retrained upper layers
    images, published = (load_file(str(d / "model.safetensors")) for d in (out / "understanding" / "export",
                                                                             out / "base"))
    below = ("visual.", "model.embed_tokens.", "model.layers.0.", "model.layers.1.")   # the saved (upstream) names
    assert images.keys() == published.keys()
    assert all(torch.equal(images[k], published[k]) for k in images if k.startswith(below))
    assert sum(k.startswith(below) for k in images) > 10
    assert not torch.equal(images["model.layers.3.mlp.up_proj.weight"], published["model.layers.3.mlp.up_proj.weight"])
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["base"] == "../base" and config["vq"] == "../vq"
    assert len(config["stacks"]) == 1 and config["sampling"]["top_k"] == 1
    assert config["edit_sampling"]["top_k"] == 0, "the generation stage's edit_sampling survives the editing stage"

    pipe = STARPipeline.from_pretrained(out / "model")
    image = pipe.text_to_image("a photo of a red circle", seed=0).images[0]
    assert image.size == (32, 32)                                           # the quick VQ: 32 px, 4x4 codes
    edited = pipe.edit(image, "remove the red circle", seed=0).images[0]
    assert edited.size == (32, 32)

    # understanding = the understanding stage's base, untouched by generation and editing
    record = next(iter(read_records(out / "data" / "understanding", kinds="vqa")))
    source = load_rgb(record["image"])
    answer = pipe.understand(source, record["question"], max_new_tokens=6)[0]
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "understanding-text" / "export").eval()
    pv, grid, n = vit_inputs(pipe.image_processor, source, None, None)
    from star.chat import understand_ids

    ids = torch.tensor([understand_ids(pipe.tokenizer, pipe.special, record["question"], n)])
    with torch.no_grad():
        own = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, image_grid_thw=grid,
                            mm_token_type_ids=(ids == pipe.special.image_pad).int(), max_new_tokens=6,
                            do_sample=False, pad_token_id=pipe.special.end_of_text)
        logits_own = base(input_ids=ids, pixel_values=pv, image_grid_thw=grid,
                          mm_token_type_ids=(ids == pipe.special.image_pad).int()).logits[0, -1]
        logits_model = pipe.model.base.hf(input_ids=ids, pixel_values=pv, image_grid_thw=grid,
                                          mm_token_type_ids=(ids == pipe.special.image_pad).int()).logits[0, -1]
    assert answer == pipe.tokenizer.decode(own[0, ids.shape[1]:], skip_special_tokens=True)
    assert torch.equal(logits_own, logits_model), "the final model's base is the last understanding entry's"

    # --resume: completed stages are skipped; an interrupted stage continues from its checkpoint
    weights = load_file(str(out / "model" / "model.safetensors"))
    total = {}
    for stage in ("generation", "editing"):      # as if killed after the first checkpoint: the rest must retrain
        (out / stage / "DONE").unlink()
        shutil.rmtree(out / stage / "export")
        checkpoints = sorted((out / stage / "checkpoints").glob("step_*"))
        assert len(checkpoints) >= 2, checkpoints
        total[stage] = int(checkpoints[-1].name.removeprefix("step_"))
        for later in checkpoints[1:]:
            shutil.rmtree(later)
    assert main(["train", "--recipe", "shapes-quick", "--out", str(out)]) == 2           # refuses without --resume
    assert main(["train", "--recipe", "shapes-quick", "--out", str(out), "--resume"]) == 0
    again = load_file(str(out / "model" / "model.safetensors"))
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    for stage, n in total.items():
        assert [r["step"] for r in read_log(out / stage / "log.jsonl")] == list(range(1, n + 1)), \
            f"{stage}: each step logged once, the retrained ones included"


def test_wise_reasoning_records_beyond_the_distinct_prompt_supply():
    from star.training.recipes import wise_reasoning_records

    records = list(wise_reasoning_records(3_000, seed=101))     # more than the ~2,000 distinct prompts
    assert len(records) == 3_000
    assert all(r["kind"] == "text_qa" and r["question"] and r["answer"] for r in records)
    assert len({r["question"] for r in records[:1_500]}) == 1_500, "distinct within a round"


def test_a_dataset_spec_with_edit_types_writes_that_mix_and_records_it(tmp_path):
    from star.training.recipes import DatasetSpec, build_dataset

    spec = DatasetSpec(kinds={"edit": 8}, seed=3, resolution=32, edit_types={"compose": 3, "remove": 1})
    build_dataset(spec, tmp_path / "d", log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "d" / "shard-00000.jsonl").read_text().splitlines()]
    assert sorted(r["edit_type"] for r in records) == ["compose"] * 6 + ["remove"] * 2
    meta = json.loads((tmp_path / "d" / "manifest.json").read_text())["meta"]
    assert meta["edit_types"] == {"compose": 3, "remove": 1}
    with pytest.raises(ValueError, match="edit type weights"):
        DatasetSpec(kinds={"edit": 8}, edit_types={"paint": 1})
    with pytest.raises(ValueError, match=r"dataset kinds \['paint'\] unknown"):
        DatasetSpec(kinds={"paint": 8})


def test_time_budget_writes_the_data_first_and_shortens_the_stages_to_fit(tmp_path):
    from star.training.recipes import get_recipe, run_recipe
    from star.training.runlog import read_log

    out = tmp_path / "quick"
    lines: list[str] = []
    recipe = get_recipe("shapes-quick", str(out))
    # 0.6 s cannot hold even the data: each stage gets only the steps that time its rate (its warm-up, 5 of 12 / 6)
    assert run_recipe(recipe, only=["understanding", "understanding-text"], time_budget_min=0.01,
                      log=lines.append) is None
    assert lines.index(next(x for x in lines if x.startswith("wrote dataset"))) < \
        lines.index(next(x for x in lines if x.startswith("understanding: training")))
    assert any(x.startswith("understanding: ") and "the budget is spent" in x for x in lines), lines
    for name in ("understanding", "understanding-text"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["steps"] == 5 and 0 < config["time_budget_s"] <= 0.6, name
        assert [r["step"] for r in read_log(out / name / "log.jsonl")] == [1, 2, 3, 4, 5], name
        assert (out / name / "DONE").is_file() and (out / name / "export" / "config.json").is_file()


def test_a_resumed_stage_budget_counts_the_time_its_interrupted_run_spent(tmp_path):
    """run_recipe gives a resumed stage its share of this call's time on top of what its checkpoint says the
    interrupted run spent (the trainer's budget counts that time)."""
    from star.training import checkpointing
    from star.training.config import apply_overrides
    from star.training.recipes import _time_spent
    from star.training.toy import ToyStage
    from star.training.trainer import train

    assert _time_spent(tmp_path / "never-started") == 0.0
    config = apply_overrides(ToyStage().default_config(), [
        f"out_dir={json.dumps(str(tmp_path / 'run'))}", "steps=6", "batch_size=8", "checkpoint_every=3",
        "progress=false", "device=\"cpu\"", "time_budget_s=600.0", "stage_options.step_delay=0.05"])
    train(config, ToyStage())
    state = checkpointing.read_trainer_state(checkpointing.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 6 and _time_spent(tmp_path / "run") == state["budget_spent_s"] >= 6 * 0.05
