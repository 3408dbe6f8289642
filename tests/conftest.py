"""Shared pytest fixtures. Sections are owned by the module they serve; add yours, keep the others.

STAR model fixtures (tests/test_model*.py): a tiny random Qwen2.5-VL base folder built offline with
star.tiny_base (hidden 64, 4 layers, a depth-2 ViT with 8-px patches, weights ~ N(0, 0.1) so that a random model's
outputs depend on its inputs), a tiny VQ (16 px -> 4x4 codes, 64 codes of
dim 8) saved as a folder, and `make_star` to build a STAR model (2 stacked layers) around them. Everything is CPU,
fp32 and seeded.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run far faster single-threaded on a shared 2-core machine, and results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# -----------------------------------------------------------------------------
# STAR model (star.model, star.pipeline, star.checkpoint)

TINY_CORPUS = [
    "a red cube left of a blue ball",
    "two green triangles above a yellow star on a white background",
    "make the cube blue",
    "remove the ball",
    "what colour is the cube?",
    "the cube is red and the ball is blue",
    "how many shapes are there? there are three shapes",
]


def tiny_vq_config():
    from star.vq import VQConfig

    return VQConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, decoder_res_blocks=1, attn_heads=1, z_channels=8,
                    norm_groups=4, codebook_size=64, code_dim=8, resolution=16)


def tiny_star_config(**overrides):
    from star.config import STARConfig

    fields = dict(hidden_size=64, stacks=[dict(num_layers=2)], adapter=dict(code_dim=8, hidden_size=64, depth=2),
                  head=dict(hidden_size=64, codebook_size=64), max_prompt_tokens=64,
                  edit_vit_min_tokens=4, edit_vit_max_tokens=64, understand_vit_max_tokens=64,
                  sampling=dict(guidance_scale=3.0, top_k=16, top_p=0.9, temperature=1.0))
    return STARConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    from star.tiny_base import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny_base") / "base", TINY_CORPUS, vocab_size=400,
                           hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                           vision_hidden_size=32, vision_intermediate_size=64, vision_depth=2, vision_heads=2,
                           patch_size=8, merge_size=2, image_size=64, initializer_range=0.1, seed=0)


@pytest.fixture(scope="session")
def star_vq_dir(tmp_path_factory):
    from star.vq import VQModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_vq") / "vq"
    VQModel(tiny_vq_config()).save_pretrained(directory)
    return directory


@pytest.fixture
def make_star(tiny_base_dir, star_vq_dir):
    """Build a fresh STAR model (fresh base and VQ objects, seeded random head/adapter) from the tiny folders."""
    from star.base import FrozenBase
    from star.model import STAR
    from star.vq import VQModel

    def make(seed: int = 0, **overrides) -> STAR:
        config = tiny_star_config(base=str(tiny_base_dir), vq=str(star_vq_dir), **overrides)
        base = FrozenBase.from_pretrained(tiny_base_dir)
        torch.manual_seed(seed)
        return STAR(config, base, VQModel.from_pretrained(star_vq_dir)).eval()

    return make
