"""STAR: a frozen vision-language base with stacked autoregressive layers that generate and edit images.

Module map, in data-flow order:

    image ─▶ vq.encode ─▶ codes (B, h, w) ─▶ vq.embed ─▶ adapter ─┐
    text  ─▶ chat (template, null row) ─▶ base.embed_text ────────┴▶ base (frozen) ─▶ stacked_ar ─▶ head
          ─▶ logits (B, N, K)
    generation: sampling (CFG, top-k/top-p) ─▶ next code ─▶ vq.embed ─▶ adapter ─▶ fed back   (loop in generate.py)
    output:     codes ─▶ vq.decode ─▶ pixels ─▶ pipeline (PIL)
    understanding: image ─▶ base ViT ─▶ base ─▶ base LM head ─▶ text

ShapeWorld (star.shapes) is the embedded world: scenes, renderer, prompts, analytic parser and exact scoring.
"""

__version__ = "0.1.0"
