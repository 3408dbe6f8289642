"""STARPipeline and the model CLI on the tiny random base: seeds, batching, understanding, reasoning, bad inputs.

Tolerance: generated codes are compared exactly (same seed / generator -> same integers); understanding answers
are compared as exact strings and token ids.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from star.chat import reasoning_row
from star.cli import main as cli_main
from star.generate import generate_codes
from star.model import Condition
from star.pipeline import STARPipeline, load_image



@pytest.fixture
def pipe(make_star):
    return STARPipeline(make_star())


def rgb(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


PROMPTS = ["a red cube", "two green triangles above a yellow star on a white background"]


def test_same_seed_same_codes_and_batch_rows_equal_solo_runs(pipe):
    batch = pipe.text_to_image(PROMPTS, seed=7)
    assert batch.codes.shape == (2, 4, 4) and batch.codes.dtype == torch.int64
    assert [im.size for im in batch.images] == [(16, 16), (16, 16)] and batch.images[0].mode == "RGB"
    assert torch.equal(pipe.text_to_image(PROMPTS, seed=7).codes, batch.codes), "same seed -> identical codes"
    assert not torch.equal(pipe.text_to_image(PROMPTS, seed=8).codes, batch.codes), "another seed -> other codes"
    # Row i of a batch uses seed + i: it equals a solo run of its prompt with that seed.
    assert torch.equal(pipe.text_to_image(PROMPTS[0], seed=7).codes[0], batch.codes[0])
    assert torch.equal(pipe.text_to_image(PROMPTS[1], seed=8).codes[0], batch.codes[1])
    # num_images: images of one prompt are consecutive rows.
    many = pipe.text_to_image(PROMPTS[1], num_images=2, seed=7)
    assert torch.equal(many.codes[1], batch.codes[1]) and len(many.images) == 2
    # An explicit list of generators works the same way.
    gens = [torch.Generator().manual_seed(8), torch.Generator().manual_seed(7)]
    swapped = pipe.text_to_image(PROMPTS[::-1], generator=gens)
    assert torch.equal(swapped.codes, batch.codes.flip(0))


def test_edit_batch_rows_equal_solo_runs(pipe):
    images = [rgb(0, (64, 64)), rgb(1, (96, 64))]
    prompts = ["make the cube blue", "remove the ball"]
    batch = pipe.edit(images, prompts, seed=3)
    assert batch.codes.shape == (2, 4, 4)
    assert torch.equal(pipe.edit(images[0], prompts[0], seed=3).codes[0], batch.codes[0])
    assert torch.equal(pipe.edit(images[1], prompts[1], seed=4).codes[0], batch.codes[1])
    assert torch.equal(pipe.edit(images, prompts, seed=3).codes, batch.codes)


def test_edit_sampling_is_the_default_of_edit_only(pipe, monkeypatch):
    from star.config import SamplingConfig

    image, prompt = rgb(0), "make the cube blue"
    greedy = dict(guidance_scale=2.0, top_k=1, top_p=1.0, temperature=1.0)
    stochastic = dict(guidance_scale=2.0, top_k=0, top_p=1.0, temperature=1.0)
    monkeypatch.setattr(pipe.model.config, "sampling", SamplingConfig(**stochastic))
    monkeypatch.setattr(pipe.model.config, "edit_sampling", SamplingConfig(**greedy))
    assert torch.equal(pipe.edit(image, prompt, seed=5).codes, pipe.edit(image, prompt, seed=5, **greedy).codes)
    assert not torch.equal(pipe.edit(image, prompt, seed=5).codes, pipe.edit(image, prompt, seed=5, **stochastic).codes)
    assert torch.equal(pipe.text_to_image(PROMPTS[0], seed=5).codes,
                       pipe.text_to_image(PROMPTS[0], seed=5, **stochastic).codes), "T2I keeps `sampling`"
    monkeypatch.setattr(pipe.model.config, "edit_sampling", None)
    assert torch.equal(pipe.edit(image, prompt, seed=5).codes, pipe.edit(image, prompt, seed=5, **stochastic).codes)


def test_temperature_and_guidance_are_applied(pipe):
    greedy = pipe.text_to_image(PROMPTS, temperature=0.0, guidance_scale=1.0, seed=1)
    again = pipe.text_to_image(PROMPTS, temperature=0.0, guidance_scale=1.0, seed=2)
    assert torch.equal(greedy.codes, again.codes), "temperature 0 is greedy: the seed does not matter"
    hot = pipe.text_to_image(PROMPTS, temperature=1.0, guidance_scale=1.0, top_k=0, top_p=1.0, seed=1)
    assert not torch.equal(hot.codes, greedy.codes), "temperature 1 samples"
    guided = pipe.text_to_image(PROMPTS, temperature=0.0, guidance_scale=5.0)
    assert not torch.equal(guided.codes, greedy.codes), "guidance changes the greedy codes"


def _switching_reference(model, cond, n, before, after):
    """Greedy guided decoding by hand: a row's scale is `after` from its first code that differs from the source."""
    source = cond.source_codes.reshape(cond.batch_size, n)
    scale = [before] * cond.batch_size
    with torch.no_grad():
        logits, state = model.prefill(cond.with_null())
        codes = []
        for i in range(n):
            c, u = logits.float().chunk(2)
            code = torch.stack([(u[r] + scale[r] * (c[r] - u[r])).argmax() for r in range(cond.batch_size)])
            scale = [after if int(code[r]) != int(source[r, i]) else scale[r] for r in range(cond.batch_size)]
            codes.append(code)
            logits, state = model.step(code.repeat(2), state)
    return torch.stack(codes, 1)


def test_guidance_after_change_switches_a_rows_scale_once_it_departs_from_its_source(pipe, monkeypatch):
    from star.config import SamplingConfig

    images, prompts = [rgb(0), rgb(1)], ["make the cube blue", "remove the ball"]
    greedy = dict(guidance_scale=3.0, temperature=0.0, top_k=0, top_p=1.0)
    plain = pipe.edit(images, prompts, **greedy).codes.flatten(1)
    assert torch.equal(pipe.edit(images, prompts, **greedy, guidance_after_change=3.0).codes.flatten(1), plain), \
        "the same scale after a change is plain guidance"
    switched = pipe.edit(images, prompts, **greedy, guidance_after_change=0.5).codes.flatten(1)     # (B, N)
    cond = pipe.edit_condition(images, prompts)
    n = pipe.model.num_image_tokens
    assert torch.equal(switched, _switching_reference(pipe.model, cond, n, 3.0, 0.5))
    assert not torch.equal(switched, plain)
    solo = pipe.edit(images[1], prompts[1], **greedy, guidance_after_change=0.5).codes.flatten(1)
    assert torch.equal(solo[0], switched[1]), "each row switches on its own"

    # the model's edit default applies when the caller gives none; text-to-image has no source and ignores it
    monkeypatch.setattr(pipe.model.config, "edit_sampling", SamplingConfig(**greedy, guidance_after_change=0.5))
    assert torch.equal(pipe.edit(images, prompts).codes.flatten(1), switched)
    monkeypatch.setattr(pipe.model.config, "sampling", SamplingConfig(**greedy, guidance_after_change=0.5))
    assert torch.equal(pipe.text_to_image(PROMPTS).codes, pipe.text_to_image(PROMPTS, **greedy).codes)
    t2i = pipe.t2i_condition(PROMPTS)[0]
    with pytest.raises(ValueError, match="guidance_after_change needs a source image"):
        generate_codes(pipe.model, t2i, n, guidance_scale=3.0, guidance_after_change=0.5)
    with pytest.raises(ValueError, match="guidance_after_change must be >= 0"):
        SamplingConfig(guidance_after_change=-1.0)


def _reference_generate(base_dir, image, question, max_new_tokens):
    """The base model's own generate, on inputs built as HF's Qwen2.5-VL processor builds them."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir).eval()
    tok, ip = AutoTokenizer.from_pretrained(base_dir), AutoImageProcessor.from_pretrained(base_dir)
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    inputs = {}
    if image is not None:
        inputs = dict(ip(images=[image], return_tensors="pt"))
        n = int(inputs["image_grid_thw"].prod()) // ip.merge_size ** 2
        text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    inputs.update(ids, mm_token_type_ids=(ids["input_ids"] == model.config.image_token_id).int())
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True), new


def test_understanding_equals_the_base_models_own_generate(pipe, tiny_base_dir):
    image = rgb(5, (64, 48))
    questions = ["what colour is the cube?", "how many shapes are there?"]
    ref_image, ref_ids = _reference_generate(tiny_base_dir, image, questions[0], 8)
    ref_text, _ = _reference_generate(tiny_base_dir, None, questions[1], 8)
    assert len(ref_ids) > 0 and ref_image != _reference_generate(tiny_base_dir, None, questions[0], 8)[0], \
        "the image changes the answer (so the comparison covers the ViT path)"
    assert pipe.understand(image, questions[0], max_new_tokens=8) == [ref_image]
    assert pipe.understand(None, questions[1], max_new_tokens=8) == [ref_text]
    assert pipe.understand([image, None], questions, max_new_tokens=8) == [ref_image, ref_text], \
        "a left-padded batch answers like solo runs"


def test_implicit_reasoning_uses_the_base_answer_as_condition(pipe):
    prompt = "what colour is the cube?"
    out = pipe.text_to_image(prompt, reasoning=True, max_answer_tokens=6, seed=11)
    answer = pipe.understand(None, prompt, max_new_tokens=6)[0]
    assert out.answers == [answer]
    row = reasoning_row(pipe.tokenizer, pipe.special, prompt, answer)
    cond = Condition.from_rows([row], pipe.special.end_of_text)
    d = pipe.model.config.sampling
    expected = generate_codes(pipe.model, cond, 16, guidance_scale=d.guidance_scale, temperature=d.temperature,
                              top_k=d.top_k, top_p=d.top_p, generator=[torch.Generator().manual_seed(11)])
    assert torch.equal(out.codes.flatten(1), expected)


def test_bad_inputs_raise_clear_errors(pipe, make_star, tmp_path, tiny_base_dir):
    from star.base import FrozenBase
    from star.model import STAR
    from star.vq import VQConfig, VQModel

    with pytest.raises(ValueError, match="empty"):
        pipe.text_to_image("   ")
    with pytest.raises(ValueError, match="too long.*max_prompt_tokens"):
        pipe.text_to_image("red " * 200)
    with pytest.raises(ValueError, match="RGB"):
        pipe.edit(Image.new("RGBA", (32, 32)), "make the cube blue")
    with pytest.raises(ValueError, match="RGB"):
        pipe.understand(Image.new("L", (32, 32)), "what colour is the cube?")
    with pytest.raises(ValueError, match="question is empty; ask something about the image"):
        pipe.understand(rgb(0), " ")
    # an image file is converted (the command line cannot): transparency composited on white
    Image.new("RGBA", (2, 1), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("LA", (2, 1), (0, 255)).save(tmp_path / "grey.png")
    assert list(load_image(tmp_path / "clear.png").getdata()) == [(255, 255, 255)] * 2
    assert list(load_image(tmp_path / "grey.png").getdata()) == [(0, 0, 0)] * 2
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="cannot decode"):
        pipe.edit(broken, "make the cube blue")
    with pytest.raises(ValueError, match="temperature"):
        pipe.text_to_image("a red cube", temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0 and finite"):
        pipe.understand(rgb(0), "what colour is the cube?", temperature=float("nan"))
    with pytest.raises(ValueError, match="guidance_scale must be >= 0 and finite"):
        pipe.text_to_image("a red cube", guidance_scale=float("inf"))
    with pytest.raises(ValueError, match="num_images must be >= 1, got 0"):
        pipe.edit(rgb(0), "make the cube blue", num_images=0)
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        pipe.edit(tmp_path, "make the cube blue")

    other = tmp_path / "llava"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="unknown base family 'llava'.*FAMILIES"):
        FrozenBase.from_pretrained(other)

    model = make_star()
    small = VQModel(VQConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_heads=1, z_channels=8, norm_groups=4,
                             codebook_size=32, code_dim=8, resolution=16))
    with pytest.raises(ValueError, match="VQ has 32 codes but the pixel head predicts 64"):
        STAR(model.config, model.base, small)


def test_cli_generate_edit_understand(make_star, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("star.commands.DEFAULT_MODEL", tmp_path / "not-installed")      # a package without its model
    assert cli_main(["generate", "a red cube", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no default model is installed" in err and "--model" in err
    folder = tmp_path / "star"
    make_star().save_pretrained(folder)
    common = ["--model", str(folder), "--device", "cpu"]
    assert cli_main(["generate", "a red cube", "-o", str(tmp_path / "g.png"), "--seed", "1", "--top-k", "8",
                     "--temperature", "0.7", "--guidance-scale", "2", "--num-images", "2", *common]) == 0
    pipe = STARPipeline.from_pretrained(folder, device="cpu")
    want = pipe.text_to_image("a red cube", seed=1, top_k=8, temperature=0.7, guidance_scale=2, num_images=2).images
    for i, image in enumerate(want):                            # the flags reach the pipeline, the files are its images
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"g_{i}.png")), np.asarray(image))
    rgb(0).save(tmp_path / "src.png")
    assert cli_main(["edit", str(tmp_path / "src.png"), "make the cube blue", "-o", str(tmp_path / "e.png"),
                     "--seed", "3", *common]) == 0
    edited = pipe.edit(Image.open(tmp_path / "src.png"), "make the cube blue", seed=3).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e.png")), np.asarray(edited))
    capsys.readouterr()
    assert cli_main(["understand", str(tmp_path / "src.png"), "what colour is the cube?", "--max-new-tokens", "4",
                     *common]) == 0
    assert capsys.readouterr().out.strip() == STARPipeline.from_pretrained(folder).understand(
        rgb(0), "what colour is the cube?", max_new_tokens=4)[0].strip()


def test_cli_refuses_bad_outputs_devices_and_configs_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "file.png").write_bytes(b"")
    for output, message in [(tmp_path, "is a folder; pass an image file"),
                            (tmp_path / "image", "does not end in an image suffix"),
                            (tmp_path / "file.png" / "x.png", "is a file, not a folder")]:
        assert cli_main(["generate", "a red cube", "-o", str(output), "--model", str(tmp_path / "nowhere")]) == 2
        assert message in capsys.readouterr().err, output
    assert cli_main(["generate", "a red cube", "-o", str(tmp_path / "g.png"), "--model", str(tmp_path),
                    "--device", "nodev"]) == 2
    assert "device 'nodev' is not a torch device" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert cli_main(["understand", str(tmp_path / "file.png"), "what?", "--model", str(bad), "--device", "cpu"]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err


def test_a_bare_base_folder_understands_like_the_star_model_built_on_it(pipe, tiny_base_dir, tmp_path, capsys):
    from star.pipeline import BasePipeline

    image = rgb(5, (64, 48))
    questions = ["what colour is the cube?", "how many shapes are there?"]
    base = BasePipeline.from_pretrained(tiny_base_dir,
                                        vit_max_tokens=pipe.model.config.understand_vit_max_tokens)
    assert base.understand([image, None], questions, max_new_tokens=8) == \
        pipe.understand([image, None], questions, max_new_tokens=8), "the same answers, without any stacked layer"
    rgb(5, (64, 48)).save(tmp_path / "q.png")
    capsys.readouterr()
    common = ["--model", str(tiny_base_dir), "--device", "cpu"]
    assert cli_main(["understand", str(tmp_path / "q.png"), questions[0], "--max-new-tokens", "8", *common]) == 0
    assert capsys.readouterr().out.strip() == base.understand(image, questions[0], max_new_tokens=8)[0].strip()
    assert cli_main(["generate", "a red cube", "-o", str(tmp_path / "x.png"), *common]) == 2
    assert "is a base model folder" in capsys.readouterr().err
