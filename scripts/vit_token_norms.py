"""Norm of a base's ViT tokens as the language model receives them, against its word embeddings' norm.

    python scripts/vit_token_norms.py runs/shapes7/base-init runs/shapes7/base [--image PNG]

One ShapeWorld image (default: the first T2I image of runs/shapes7/data/t2i) goes through the base's ViT and merger;
prints the mean and std of the per-token L2 norm and the mean norm of the token-embedding rows.
"""

from __future__ import annotations

import argparse
import glob

import torch
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bases", nargs="+", help="HF Qwen2.5-VL base folders")
    p.add_argument("--image", default=None)
    args = p.parse_args()
    from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

    path = args.image or sorted(glob.glob("runs/shapes7/data/t2i/images/*.png"))[0]
    image = Image.open(path).convert("RGB")
    for base in args.bases:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base).eval()
        inputs = AutoImageProcessor.from_pretrained(base)(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        feats = getattr(out, "pooler_output", out)
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats        # (n_vit, D)
        norms = feats.norm(dim=-1)
        words = model.model.language_model.embed_tokens.weight.norm(dim=-1).mean()
        print(f"{base}: {feats.shape[0]} ViT tokens, norm {norms.mean():.3f} ± {norms.std():.3f}; "
              f"word embeddings {words:.3f}")


if __name__ == "__main__":
    main()
