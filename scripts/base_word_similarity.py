"""Can the layers above a base tell its prompt words apart? Cosine similarity between the base's hidden states at
different words in the same sentence, per layer.

    python scripts/base_word_similarity.py runs/shapes/base [more base folders]
    python scripts/base_word_similarity.py runs/uB/base --template "a photo of a {} star" --words red blue green

For each word w, the sentence (template with w, inside the chat template's user turn) goes through the base's
language model; the hidden state at w's token is taken after the embeddings and after every layer (the last after the
final norm), and the mean pairwise cosine over the words is printed per layer (1.0 = the words are indistinguishable
there), with the mean norm of the states after layer 1. The STAR stack reads the last of these states
(docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white"]


def word_states(folder: str, template: str, words: list[str]) -> list[torch.Tensor]:
    """-> per word, (layers + 1, D): the embeddings, then every layer's output (the last after the final norm)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    states = []
    for word in words:
        ids = tok(f"<|im_start|>user\n{template.format(word)}<|im_end|>", return_tensors="pt")["input_ids"]
        target = tok(" " + word, add_special_tokens=False)["input_ids"]
        if len(target) != 1:
            raise ValueError(f"{word!r} is {len(target)} tokens in {folder}'s tokenizer; pick one-token words")
        pos = ids[0].tolist().index(target[0])
        with torch.no_grad():
            out = model.model.language_model(input_ids=ids, output_hidden_states=True)
        # hidden_states: the embeddings, then each layer's output; transformers stores the last one after the norm
        states.append(torch.stack([h[0, pos] for h in out.hidden_states]))
    return states


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bases", nargs="+", help="base model folders (HF Qwen2.5-VL)")
    p.add_argument("--template", default="a photo of a {} star")
    p.add_argument("--words", nargs="+", default=COLOURS)
    args = p.parse_args()
    torch.set_num_threads(1)
    for folder in args.bases:
        states = torch.stack(word_states(folder, args.template, args.words))      # (W, L, D)
        unit = torch.nn.functional.normalize(states, dim=-1).transpose(0, 1)      # (L, W, D)
        sims = unit @ unit.transpose(1, 2)                                          # (L, W, W)
        off = ~torch.eye(len(args.words), dtype=torch.bool)
        per_layer = " ".join(f"{s[off].mean():.3f}" for s in sims)
        print(f"{folder}: mean cosine between words, embeddings -> last layer: {per_layer}; "
              f"norm after layer 1 {states[:, 1].norm(dim=-1).mean():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
