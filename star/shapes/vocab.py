"""ShapeWorld vocabulary: shape classes, colours, backgrounds, size bands and the alignment grid.

Fixed and versioned (research/eval.md §9.1): any change that alters what a word means or how it renders must bump
VOCAB_VERSION, because datasets, tokenizers and trained models are tied to it.
"""

from __future__ import annotations

VOCAB_VERSION = "shapeworld-1"

# 7 classes, chosen so that template IoUs stay far apart after a VQ blurs the edges.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "arrow")

# Orientation variants per class (first = canonical). Used by the "action" edits; the parser fits all of them.
ORIENTATIONS: dict[str, tuple[str, ...]] = {
    "circle": ("up",),
    "square": ("up",),
    "triangle": ("up", "down"),
    "diamond": ("up",),
    "star": ("up", "down"),
    "cross": ("up",),
    "arrow": ("right", "left", "up", "down"),
}

# GenEval's 10 colours with fixed sRGB anchors; pairwise CIELAB ΔE76 ≥ 40.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 0),
    "green": (40, 160, 40),
    "blue": (20, 90, 230),
    "purple": (150, 40, 170),
    "pink": (255, 130, 190),
    "brown": (120, 70, 25),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}

# Backgrounds: a separate name list, each ΔE ≥ 38 from every object colour. "gray" is the default.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "slate": (90, 110, 130),
    "sage": (100, 130, 110),
    "khaki": (170, 160, 120),
    "teal": (80, 120, 120),
    "mauve": (160, 130, 150),
}
DEFAULT_BACKGROUND = "gray"

# Size bands: max bbox side / image side. Judge boundaries sit between bands with margin ≥ 0.025.
SIZE_BANDS: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.15),
    "medium": (0.20, 0.27),
    "large": (0.33, 0.42),
}
SIZE_BOUNDARIES: tuple[float, float] = (0.175, 0.30)  # small | medium | large

# The aligned (default) world: the image is a GRID × GRID lattice of cells; an object fills a block of k×k whole cells
# (k = CELLS_PER_SIZE[band]) and is drawn inside it with the fraction FILL of the block side, centred.
GRID = 8
CELLS_PER_SIZE: dict[str, int] = {"small": 1, "medium": 2, "large": 3}
FILL = 0.9
DEFAULT_RESOLUTION = 128  # 16-px cells: a 16× downsampling tokenizer gives one code per cell (8×8 = 64 codes)

# Spatial relations, as GenEval names them, and counts that prompts may use.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}


def size_band(size: float) -> str:
    """Band name of a max-side fraction, by the judge boundaries."""
    lo, hi = SIZE_BOUNDARIES
    return "small" if size < lo else ("medium" if size < hi else "large")


def with_article(name: str) -> str:
    """GenEval's rule: "an" before a vowel letter, else "a"."""
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def make_plural(name: str) -> str:
    """GenEval's rule: +"es" after a final "s", else +"s"."""
    return f"{name}es" if name.endswith("s") else f"{name}s"
