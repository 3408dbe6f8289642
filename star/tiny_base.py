"""A tiny Qwen2.5-VL base, built offline and saved as an ordinary HuggingFace folder.

It is the same `Qwen2_5_VLForConditionalGeneration` class as Qwen2.5-VL-3B/7B with small sizes, so every code path
of STAR (frozen base, stacked AR copied from its top layers, ViT view for editing, understanding with `generate`)
runs on it unchanged. It serves the tests and is the starting point of the ShapeWorld base that the project trains.

The folder holds what `from_pretrained` expects of a Qwen2.5-VL checkpoint:

    config.json                 Qwen2_5_VLConfig (text decoder + vision tower), special-token ids of this tokenizer
    model.safetensors           randomly initialised weights (seeded)
    generation_config.json      eos = <|im_end|> / <|endoftext|>, pad = <|endoftext|>
    tokenizer.json, tokenizer_config.json, chat_template.jinja
                                byte-level BPE trained on the given corpus (Qwen's pre-tokenizer pattern), plus
                                Qwen's special tokens, plus a Qwen-style chat template (default system prompt)
    preprocessor_config.json    the Qwen2-VL image processor (PIL backend) with a patch size suited to small images

Data flow: corpus (strings) -> tokenizer; sizes -> config -> random weights -> folder -> FrozenBase.from_pretrained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

# Qwen2.5's special tokens, in Qwen's order (so ids keep Qwen's relative layout after the BPE vocabulary).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2's pre-tokenizer split (contractions, letters, single digits, punctuation runs, newlines, spaces).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A Qwen-style chat template: the default system prompt when none is given, `<|im_start|>role\n...<|im_end|>\n`
# turns, images as `<|vision_start|><|image_pad|><|vision_end|>`, and `<|im_start|>assistant\n` as the prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the chat format itself needs as whole tokens; always added to the BPE training corpus.
_TEMPLATE_TEXT = ("system\nYou are a helpful assistant.\nuser\nassistant\n Ultra HD, 4K, cinematic composition\n")


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE on `corpus`, add Qwen's special tokens and the chat template.

    Returns a `PreTrainedTokenizerFast`. Byte-level BPE never produces an unknown token, and `assistant` and `\\n`
    come out as single tokens, which the CFG null row (`<|im_start|>assistant\\n<|vision_start|>` kept as the last
    four tokens) relies on.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = list(corpus)
    if not texts:
        raise ValueError("build_tokenizer needs a non-empty corpus of strings (the words the tiny base should know)")
    tok.train_from_iterator([_TEMPLATE_TEXT] * 8 + texts, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    for word in ("assistant", "\n"):
        if len(fast.encode(word, add_special_tokens=False)) != 1:
            raise ValueError(f"the trained tokenizer splits {word!r} into several tokens; raise vocab_size "
                             f"(now {vocab_size}) so the chat format's words stay whole")
    return fast


def build_tiny_base(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_hidden_size: int = 32,
    vision_intermediate_size: int = 64,
    vision_depth: int = 2,
    vision_heads: int = 2,
    patch_size: int = 8,
    merge_size: int = 2,
    image_size: int = 128,
    max_position_embeddings: int = 4096,
    rope_theta: float = 1_000_000.0,
    mrope_section: Sequence[int] | None = None,
    initializer_range: float = 0.02,
    embedding_std: float | None = None,
    match_vision_norm: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny, randomly initialised Qwen2.5-VL folder to `out_dir` and return its path.

    `vocab_size` is the BPE target size (the model's embedding table rounds len(tokenizer) up to a multiple of 64).
    `image_size` sets the image processor's pixel budget: an image of that side becomes
    (image_size / (patch_size * merge_size))**2 ViT tokens in the language model. `initializer_range` is the std of
    the random weights (tests use a larger one so that a random model's answers depend on its input). `rope_theta` is
    the language model's RoPE base: M-RoPE gives the image width axis the lowest frequencies, which at Qwen's 1e6 turn
    by under 0.01 rad across an 8-cell row, so a small image grid wants a much smaller base. `mrope_section` splits
    the head_dim / 2 rotary frequencies, highest first, among M-RoPE's (time, height, width) positions (None = Qwen's
    16:24:24 proportion); text tokens use all of them either way. `embedding_std` (None =
    `initializer_range`) is the std of the token embeddings: at 0.02 a word enters the residual stream with norm ~0.3,
    and a briefly trained tiny model soon adds a shared vector ~100x larger, so later layers barely tell words apart.
    `match_vision_norm` rescales the ViT merger's output projection so that image tokens enter the language model
    with the token embeddings' median norm (see `_match_vision_norm`); else a random ViT's tokens are ~20x smaller
    than words of `embedding_std` 0.5.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or head_dim % 2:
        raise ValueError(f"hidden_size={hidden_size} must split into num_heads={num_heads} heads of even size")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    if vision_hidden_size % vision_heads or (vision_hidden_size // vision_heads) % 4:
        raise ValueError(f"vision head size {vision_hidden_size}/{vision_heads} must be a multiple of 4 (2-D rope)")
    # M-RoPE sections (t, h, w) over head_dim / 2 frequencies, by default in Qwen's 16:24:24 proportion.
    half = head_dim // 2
    if mrope_section is None:
        t_sec = max(1, half // 4)
        h_sec = (half - t_sec) // 2
        mrope_section = [t_sec, h_sec, half - t_sec - h_sec]
    mrope_section = [int(n) for n in mrope_section]
    if len(mrope_section) != 3 or min(mrope_section) < 1 or sum(mrope_section) != half:
        raise ValueError(f"mrope_section={mrope_section} must be 3 positive sizes (time, height, width) summing to "
                         f"head_dim/2 = {half}")
    unit = patch_size * merge_size
    if image_size % unit:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size*merge_size={unit}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus, vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}

    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-6, initializer_range=initializer_range,
            rope_parameters=dict(rope_type="default", rope_theta=rope_theta, mrope_section=mrope_section),
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
            num_heads=vision_heads, out_hidden_size=hidden_size, patch_size=patch_size,
            spatial_merge_size=merge_size, temporal_patch_size=2, window_size=2 * unit,
            fullatt_block_indexes=[vision_depth - 1], tokens_per_second=2, initializer_range=initializer_range,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    if embedding_std is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, embedding_std)
    vision_scale = _match_vision_norm(model, patch_size, unit, seed) if match_vision_norm else 1.0
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
        min_pixels=unit * unit, max_pixels=image_size * image_size,
    )
    processor.save_pretrained(out)
    (out / "star_tiny_base.json").write_text(json.dumps(
        {"built_by": "star.tiny_base.build_tiny_base", "image_size": image_size, "seed": seed,
         "vision_output_scale": vision_scale}, indent=2))
    return out


def _match_vision_norm(model, patch_size: int, unit: int, seed: int) -> float:
    """Scale the merger's last linear layer so image tokens have the median norm of a token embedding; returns the
    factor.

    Calibrated on one image of standard-normal pixels (the image processor's normalised scale) with 4 x 4 merged
    tokens: a random ViT gives rendered ShapeWorld images and such noise the same token norm within ~5 %. The merger's
    last layer is linear, so scaling its weight and bias scales every image token by the same factor.
    """
    last = model.model.visual.merger.mlp[-1]
    if not isinstance(last, torch.nn.Linear):
        raise TypeError(f"expected the ViT merger to end in nn.Linear, found {type(last).__name__}")
    side = 4 * (unit // patch_size)                       # 4 x 4 merged tokens
    grid = torch.tensor([[1, side, side]])
    pixels = torch.randn(side * side, 3 * 2 * patch_size * patch_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        tokens = model.model.get_image_features(pixels, grid).pooler_output[0]      # (side*side / merge², D)
        target = model.get_input_embeddings().weight.norm(dim=-1).median()
        factor = (target / tokens.norm(dim=-1).median()).item()
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)
    return factor
