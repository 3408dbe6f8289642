"""Token-level formats of every STAR task: chat templates, image placeholders and the CFG null row.

Where it sits: strings -> chat (this file, token id lists) -> model.Condition (padded tensors) -> model.embed.
Exact formats are in `research/paper.md` §3-4 and mirror the upstream release (MM-MVR/STAR star/models/model.py):

    T2I    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n
           <|im_start|>assistant\\n<|vision_start|>
    edit   as T2I, with  <|vision_start|> VQ x n <|vision_end|> <|vision_start|> ViT x m <|vision_end|> \\n
           inserted right after `<|im_start|>user\\n` (VQ view first, then ViT view, then a newline)
    null   same length: the first token and the last four (`<|im_start|>assistant\\n<|vision_start|>`) kept, every
           other text token replaced by <|fim_pad|>; for editing the two image blocks (and their newline) are kept
    reason as T2I with the prompt tokens replaced by the base's answer + " Ultra HD, 4K, cinematic composition"

Image positions are written as placeholder ids, which is also the surrogate sequence upstream feeds Qwen's 3-D rope
index: one `<|vision_pad|>` per VQ code (treated as text: 1-D positions) and one `<|image_pad|>` per ViT token
(3-D positions). The model fills the placeholders with embeddings (model.STAR.embed).
"""

from __future__ import annotations

from dataclasses import dataclass

# Appended to the base's answer in implicit-reasoning mode (upstream `generate_images_reasoning`).
REASONING_SUFFIX = " Ultra HD, 4K, cinematic composition"

SPECIAL_TOKEN_NAMES = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "vision_pad": "<|vision_pad|>",     # placeholder of one VQ code
    "image_pad": "<|image_pad|>",       # placeholder of one ViT token
    "fim_pad": "<|fim_pad|>",           # the CFG null token
    "end_of_text": "<|endoftext|>",     # padding
}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens STAR's formats use, read from the base's tokenizer."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    vision_pad: int
    image_pad: int
    fim_pad: int
    end_of_text: int
    newline: int
    """Id of "\\n" (a single token in Qwen's vocabulary and in the tiny base's)."""
    assistant: int
    """Id of "assistant" (the role name of the generation prompt)."""

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        vocab = tokenizer.get_vocab()
        missing = [tok for tok in SPECIAL_TOKEN_NAMES.values() if tok not in vocab]
        if missing:
            raise ValueError(f"the base tokenizer lacks STAR's special tokens {missing}; STAR needs a Qwen-style "
                             f"vocabulary (Qwen2.5-VL, or a folder made by star.tiny_base.build_tiny_base)")
        ids = {name: vocab[tok] for name, tok in SPECIAL_TOKEN_NAMES.items()}
        for name, text in (("newline", "\n"), ("assistant", "assistant")):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"the base tokenizer splits {text!r} into {len(enc)} tokens; the CFG null row "
                                 f"keeps `<|im_start|>assistant\\n<|vision_start|>` as exactly four tokens")
            ids[name] = enc[0]
        return cls(**ids)


@dataclass(frozen=True)
class Row:
    """One conditioning sequence and its CFG null row (same length, same image placeholders)."""

    ids: list[int]
    null_ids: list[int]

    def __post_init__(self):
        if len(self.ids) != len(self.null_ids):
            raise ValueError(f"a row and its null row must have the same length, got {len(self.ids)} and "
                             f"{len(self.null_ids)}")


# -----------------------------------------------------------------------------
# Builders


def _chat_ids(tokenizer, content, add_generation_prompt: bool = True) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return tokenizer.encode(text, add_special_tokens=False)


def check_prompt(prompt: str, what: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{what} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        hint = {"prompt": "describe the image to generate", "edit instruction": "say what to change",
                "question": "ask something about the image"}.get(what, "write it in words")
        raise ValueError(f"{what} is empty; {hint}")
    return prompt


def null_row(ids: list[int], special: SpecialTokens) -> list[int]:
    """Upstream's CFG null construction: keep ids[0] and the last four ids, every other id becomes <|fim_pad|>."""
    if len(ids) < 5:
        raise ValueError(f"a generation prompt has at least five tokens, got {len(ids)}")
    return [ids[0]] + [special.fim_pad] * (len(ids) - 5) + ids[-4:]


def t2i_row(tokenizer, special: SpecialTokens, prompt: str) -> Row:
    """Text-to-image condition: the chat template of `prompt` with the generation prompt, then <|vision_start|>."""
    ids = _chat_ids(tokenizer, check_prompt(prompt)) + [special.vision_start]
    return Row(ids, null_row(ids, special))


def _user_content_start(ids: list[int], tokenizer) -> int:
    header = tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
    for i in range(len(ids) - len(header) + 1):
        if ids[i:i + len(header)] == header:
            return i + len(header)
    raise ValueError("the chat template produced no `<|im_start|>user\\n` header; STAR needs a Qwen-style template")


def image_blocks(special: SpecialTokens, num_vq: int, num_vit: int) -> list[int]:
    """The editing source image: VQ view block, ViT view block, newline (upstream order)."""
    return ([special.vision_start] + [special.vision_pad] * num_vq + [special.vision_end]
            + [special.vision_start] + [special.image_pad] * num_vit + [special.vision_end] + [special.newline])


def edit_row(tokenizer, special: SpecialTokens, instruction: str, num_vq: int, num_vit: int) -> Row:
    """Editing condition: the T2I row of `instruction` with the source image blocks after `<|im_start|>user\\n`.

    The null row is built from the text row first and the blocks are inserted afterwards, so they stay in it.
    """
    text = t2i_row(tokenizer, special, check_prompt(instruction, "edit instruction"))
    at = _user_content_start(text.ids, tokenizer)
    block = image_blocks(special, num_vq, num_vit)
    return Row(text.ids[:at] + block + text.ids[at:], text.null_ids[:at] + block + text.null_ids[at:])


def reasoning_row(tokenizer, special: SpecialTokens, prompt: str, answer: str) -> Row:
    """Implicit reasoning: the T2I row of `prompt` whose prompt tokens are replaced by `answer` + REASONING_SUFFIX."""
    text = t2i_row(tokenizer, special, prompt)
    start = _user_content_start(text.ids, tokenizer)
    end = len(text.ids) - 1 - text.ids[::-1].index(special.im_end)          # the last <|im_end|>
    answer_ids = tokenizer.encode(answer, add_special_tokens=False) + tokenizer.encode(
        REASONING_SUFFIX, add_special_tokens=False)
    ids = text.ids[:start] + answer_ids + text.ids[end:]
    return Row(ids, null_row(ids, special))


def understand_ids(tokenizer, special: SpecialTokens, question: str, num_vit: int | None) -> list[int]:
    """Understanding prompt for the base's own `generate`: an optional image (num_vit ViT tokens), then the question."""
    check_prompt(question, "question")
    if num_vit is None:
        return _chat_ids(tokenizer, question)
    ids = _chat_ids(tokenizer, [{"type": "image"}, {"type": "text", "text": question}])
    at = ids.index(special.image_pad)
    return ids[:at] + [special.image_pad] * num_vit + ids[at + 1:]
