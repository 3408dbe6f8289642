"""STARPipeline: text-to-image, editing and understanding, PIL in and PIL out. Inference only.

Data flow:
    text_to_image: prompts ─▶ chat.t2i_row (or, with reasoning=True, the base's answer ─▶ chat.reasoning_row)
                   ─▶ Condition ─▶ generate.generate_codes ─▶ vq.decode ─▶ PIL
    edit:          image ─▶ resize to the VQ resolution ─▶ vq.encode (VQ view)  ┐
                   image ─▶ base image processor (ViT view)                     ┴▶ chat.edit_row ─▶ Condition ─▶ …
    understand:    image + question ─▶ chat.understand_ids ─▶ the base's own HF `generate` ─▶ text

Every task method takes the same sampling arguments (None = the model's SamplingConfig): `num_images`,
`guidance_scale`, `top_k`, `top_p`, `temperature` (applied; 0 = greedy), and `seed` or `generator`. Several prompts
run as one left-padded batch. With `seed`, image i of the batch (prompt-major order) uses seed + i, so it equals a
solo run with that seed; `generator` may be one torch.Generator or a list with one per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from star.chat import Row, check_prompt, edit_row, reasoning_row, t2i_row, understand_ids
from star.config import check_sampling
from star.generate import generate_codes
from star.model import STAR, Condition, left_pad
from star.views import vit_inputs, vq_pixels


@dataclass
class ImageOutput:
    images: list[Image.Image]        # one per generated image, prompt-major order
    codes: Tensor                    # (N, h, w) int64 VQ codes of the images
    answers: list[str] | None = None  # implicit reasoning: the base's answer used as each prompt's condition


def load_image(image) -> Image.Image:
    """A PIL image or a path -> an RGB PIL image; anything else raises a ValueError that says what to do.

    An image *file* in another mode is converted, since its reader cannot (the command line): transparency is
    composited on white, greyscale and palettes expanded. A PIL image in another mode is refused, so that a Python
    caller decides what its alpha channel or palette means."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not an image file")
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} not found")
        try:
            with Image.open(path) as f:
                f.load()
                image = f.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image file {path}: {exc}") from exc
        if image.mode != "RGB":
            rgba = image.convert("RGBA")                                  # any mode, transparency included
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or an image path, got {type(image).__name__}")
    if image.mode != "RGB":
        raise ValueError(f"image mode is {image.mode!r}, expected 'RGB'; convert it first, e.g. image.convert('RGB') "
                         f"(an alpha channel or palette would otherwise be interpreted silently)")
    return image


def _as_list(value, name: str) -> list:
    items = [value] if isinstance(value, (str, Path, Image.Image)) or value is None else list(value)
    if not items:
        raise ValueError(f"{name} is an empty list")
    return items


def _check_num_images(num_images: int) -> None:
    if num_images < 1:
        raise ValueError(f"nothing to generate: num_images must be >= 1, got {num_images}")


def check_length(rows: list, special, limit: int, max_positions: int, new_tokens: int) -> None:
    """Refuse prompts longer than `limit` text tokens (chat template included, image placeholders not counted) and
    sequences that would outgrow the base's positions."""
    placeholders = (special.vision_pad, special.image_pad)
    for ids in rows:
        ids = ids.ids if isinstance(ids, Row) else ids
        text = sum(1 for t in ids if t not in placeholders)
        if text > limit:
            raise ValueError(f"prompt is too long: {text} tokens with the chat template, the limit is {limit} "
                             f"(STARConfig.max_prompt_tokens); shorten it")
        if len(ids) + new_tokens > max_positions:
            raise ValueError(f"sequence of {len(ids)} + {new_tokens} tokens exceeds the base's "
                             f"{max_positions} positions; shorten the prompt")


class BasePipeline:
    """The frozen base on its own: image + question -> answer with the base's own `generate`.

    STAR's understanding is exactly this (STARPipeline.understand delegates here), so a base folder can be evaluated
    before any stacked layer exists, e.g. right after the understanding stage (`star understand --model BASE_DIR`,
    `star eval shapes --suite vqa --model BASE_DIR`)."""

    def __init__(self, base, *, vit_max_tokens: int | None = None, max_prompt_tokens: int = 512):
        from star.chat import SpecialTokens

        if base.tokenizer is None or base.image_processor is None:
            raise ValueError("the base has no tokenizer / image processor; load it with FrozenBase.from_pretrained")
        self.base, self.vit_max_tokens, self.max_prompt_tokens = base, vit_max_tokens, max_prompt_tokens
        self.tokenizer, self.image_processor = base.tokenizer, base.image_processor
        self.special = SpecialTokens.from_tokenizer(base.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **kwargs) -> "BasePipeline":
        from star.base import FrozenBase

        return cls(FrozenBase.from_pretrained(path, device=device, dtype=dtype), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.base.device

    @torch.inference_mode()
    def understand(self, image, prompt: str | list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int | None = None, generator=None) -> list[str]:
        """Answer each question (about `image`: None, one image, or one per question) with the base's own
        `generate`. temperature 0 = greedy."""
        prompts = [check_prompt(p, "question") for p in _as_list(prompt, "prompt")]
        images = _as_list(image, "image")
        if len(images) == 1:
            images = images * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} questions; pass one image, or one per "
                             f"question")
        check_sampling(1.0, top_k, top_p, temperature)
        vit = [None if im is None else vit_inputs(self.image_processor, load_image(im), None, self.vit_max_tokens)
               for im in images]
        rows = [understand_ids(self.tokenizer, self.special, q, None if v is None else v[2])
                for q, v in zip(prompts, vit)]
        check_length(rows, self.special, self.max_prompt_tokens, self.base.text_config.max_position_embeddings,
                     max_new_tokens)
        ids, mask = (t.to(self.device) for t in left_pad(rows, self.special.end_of_text))    # (B, T)
        inputs = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == self.special.image_pad).int())
        if any(v is not None for v in vit):
            inputs["pixel_values"] = torch.cat([v[0] for v in vit if v is not None]).to(self.device)
            inputs["image_grid_thw"] = torch.cat([v[1] for v in vit if v is not None]).to(self.device)
        sampling = (dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)   # top_k 0 = off
                    if temperature > 0 else dict(do_sample=False, temperature=None, top_k=None, top_p=None))
        if generator is not None and seed is None:
            seed = generator.initial_seed()
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.base.generate(**inputs, max_new_tokens=max_new_tokens,
                                           pad_token_id=self.special.end_of_text, **sampling)
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)



class STARPipeline:
    def __init__(self, model: STAR):
        if model.base.tokenizer is None or model.base.image_processor is None:
            raise ValueError("the model's base has no tokenizer / image processor; load it with "
                             "FrozenBase.from_pretrained (or STARPipeline.from_pretrained)")
        self.model = model.eval()
        self.tokenizer = model.base.tokenizer
        self.image_processor = model.base.image_processor
        self.special = model.special
        self.base_pipeline = BasePipeline(model.base, vit_max_tokens=model.config.understand_vit_max_tokens,
                                          max_prompt_tokens=model.config.max_prompt_tokens)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "STARPipeline":
        return cls(STAR.from_pretrained(path, device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.model.base.device

    # --- tasks --------------------------------------------------------------------
    def text_to_image(self, prompt: str | list[str], *, num_images: int = 1, guidance_scale: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                      seed: int | None = None, generator=None, reasoning: bool = False,
                      max_answer_tokens: int = 256) -> ImageOutput:
        """Generate `num_images` images per prompt. reasoning=True: the base answers each prompt first (greedy)
        and the answer (+ " Ultra HD, 4K, cinematic composition") is the condition; answers are returned."""
        cond, answers = self.t2i_condition(prompt, num_images=num_images, reasoning=reasoning,
                                           max_answer_tokens=max_answer_tokens)
        codes = self._generate(cond, "t2i", guidance_scale, top_k, top_p, temperature, seed, generator)
        return ImageOutput(*self._decode(codes), answers=answers)

    def edit(self, image, prompt: str | list[str], *, num_images: int = 1, guidance_scale: float | None = None,
             top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
             seed: int | None = None, generator=None, guidance_after_change: float | None = None) -> ImageOutput:
        """Edit `image` (one image, or one per prompt) following each instruction in `prompt`. guidance_after_change:
        the CFG scale of an edit once its decoded codes depart from the source (SamplingConfig; None = the model's)."""
        cond = self.edit_condition(image, prompt, num_images=num_images)
        codes = self._generate(cond, "edit", guidance_scale, top_k, top_p, temperature, seed, generator,
                               guidance_after_change)
        return ImageOutput(*self._decode(codes))

    def understand(self, image, prompt: str | list[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int | None = None, generator=None) -> list[str]:
        """Answer each question with the frozen base (BasePipeline.understand); the stacked AR is not involved."""
        return self.base_pipeline.understand(image, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                             top_k=top_k, top_p=top_p, seed=seed, generator=generator)

    # --- conditions (what the decode loop starts from) ---------------------------
    def t2i_condition(self, prompt: str | list[str], *, num_images: int = 1, reasoning: bool = False,
                      max_answer_tokens: int = 256) -> tuple[Condition, list[str] | None]:
        """Prompts -> Condition with num_images rows per prompt (prompt-major), and the reasoning answers."""
        prompts = [check_prompt(p) for p in _as_list(prompt, "prompt")]
        _check_num_images(num_images)
        answers = None
        if reasoning:
            answers = self.understand(None, prompts, max_new_tokens=max_answer_tokens, temperature=0.0)
            rows = [reasoning_row(self.tokenizer, self.special, p, a) if a.strip()   # empty answer: the prompt
                    else t2i_row(self.tokenizer, self.special, p) for p, a in zip(prompts, answers)]
        else:
            rows = [t2i_row(self.tokenizer, self.special, p) for p in prompts]
        return self._condition([r for r in rows for _ in range(num_images)]), answers

    def edit_condition(self, image, prompt: str | list[str], *, num_images: int = 1) -> Condition:
        """Source image(s) + instructions -> Condition: VQ view and ViT view spliced after `<|im_start|>user\\n`."""
        prompts = [check_prompt(p, "edit instruction") for p in _as_list(prompt, "prompt")]
        _check_num_images(num_images)
        images = [load_image(im) for im in _as_list(image, "image")]
        if len(images) == 1:
            images = images * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} instructions; pass one image, or one "
                             f"per instruction")
        cfg = self.model.config
        source_codes = self._encode_vq(images)                                            # (B, h*w)
        vit = [self._vit_inputs(im, cfg.edit_vit_min_tokens, cfg.edit_vit_max_tokens) for im in images]
        rows = [edit_row(self.tokenizer, self.special, p, source_codes.shape[1], n)
                for p, (_, _, n) in zip(prompts, vit)]
        rep = lambda items: [x for x in items for _ in range(num_images)]  # noqa: E731
        return self._condition(rep(rows), source_codes=source_codes.repeat_interleave(num_images, 0),
                               pixel_values=torch.cat(rep([pv for pv, _, _ in vit])),
                               image_grid_thw=torch.cat(rep([g for _, g, _ in vit])))

    # --- helpers ------------------------------------------------------------------
    def _check_length(self, rows: list, new_tokens: int) -> None:
        check_length(rows, self.special, self.model.config.max_prompt_tokens,
                     self.model.base.text_config.max_position_embeddings, new_tokens)

    def _condition(self, rows: list[Row], **images) -> Condition:
        if len(rows) == 0:
            raise ValueError("nothing to generate: num_images must be >= 1")
        self._check_length(rows, self.model.num_image_tokens)
        return Condition.from_rows(rows, self.special.end_of_text, device=self.device, **images)

    def _generate(self, cond: Condition, task: str, guidance_scale, top_k, top_p, temperature, seed,
                  generator, guidance_after_change=None) -> Tensor:
        d = self.model.config.default_sampling(task)
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        top_k = d.top_k if top_k is None else top_k
        top_p = d.top_p if top_p is None else top_p
        temperature = d.temperature if temperature is None else temperature
        if task != "edit":
            guidance_after_change = None
        elif guidance_after_change is None:
            guidance_after_change = d.guidance_after_change
        check_sampling(guidance_scale, top_k, top_p, temperature, guidance_after_change)
        if generator is None and seed is not None:
            generator = [torch.Generator(self.device).manual_seed(seed + i) for i in range(cond.batch_size)]
        return generate_codes(self.model, cond, self.model.num_image_tokens, guidance_scale=guidance_scale,
                              temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                              guidance_after_change=guidance_after_change)

    def _decode(self, codes: Tensor) -> tuple[list[Image.Image], Tensor]:
        h, w = self.model.image_grid
        codes = codes.view(-1, h, w)                                                      # (N, h, w)
        with torch.inference_mode():
            pixels = self.model.vq.decode(codes).float().clamp(-1, 1)                     # (N, 3, H, W)
        arrays = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays], codes

    @torch.inference_mode()
    def _encode_vq(self, images: list[Image.Image]) -> Tensor:
        """VQ view -> (B, h*w) codes."""
        side = self.model.vq.config.resolution
        pixels = torch.stack([vq_pixels(im, side) for im in images])                      # (B, 3, side, side)
        vq = self.model.vq
        return vq.encode(pixels.to(self.device, next(vq.parameters()).dtype)).flatten(1)  # (B, h*w)

    def _vit_inputs(self, image: Image.Image, min_tokens: int | None, max_tokens: int | None):
        """ViT view through this model's image processor (star.views.vit_inputs)."""
        return vit_inputs(self.image_processor, image, min_tokens, max_tokens)
