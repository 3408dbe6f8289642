"""ShapeWorld: the embedded world of flat coloured shapes in which every STAR stage is trained and measured.

vocab (names, colours, sizes, grid) → scene (JSON specs) → render (pixels) → sample (scene samplers, held-out split)
→ text (prompts, captions, VQA, WISE, edit instructions) → edits (the nine edit types) → parse (pixels → scene graph)
→ geneval / imgedit / vqa (exact, judge-free scoring).
"""

from star.shapes.vocab import VOCAB_VERSION

__all__ = ["VOCAB_VERSION"]
