"""Analytic parser: image → scene graph, deterministic, no weights (research/eval.md §9.3).

This is the "detector" of every ShapeWorld judge. Data flow:

    pixels (H, W, 3) uint8 ─▶ CIELAB ─▶ background (border-ring median) ─▶ foreground (ΔE76 > 20)
        ─▶ core pixels (within ΔE 20 of a palette colour, or ΔE 10 of its ≥50% blend line with the background)
        ─▶ instances (8-connected, per palette label or whole fg)
        ─▶ fringes merged, tiny ones dropped, blend pixels absorbed ─▶ coverage map per instance
        ─▶ shape fit (template IoU) ─▶ colour, size band, orientation, hollow ─▶ SceneGraph

Shape fit (calibrated version of §9.3 step 4, see docs/scoring.md): instead of binarising the mask and resizing it
to 32×32, each instance's soft coverage map (the pixel's position on the sRGB line from background to object colour,
which is exactly the area coverage for the renderer's BOX antialiasing) is compared with every class template
(`render.template`, 64×64, all orientations) placed at the instance's moment-matched box and integrated over the
native pixel grid. confidence = soft IoU of the best template; the box reported is that template's box. This is
resolution independent (64² to 256², any placement) and clears the GenEval counting threshold (0.9) on clean
renders at 128² and above (measured figures, and the small-object limits at 64², in docs/scoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage, optimize

from star.shapes import vocab
from star.shapes.render import HOLLOW_WIDTH, template
from star.shapes.scene import Obj, Scene, relation_margin, relative_position

FG_DELTA_E = 20.0  # foreground: ΔE76 to the background above this
CORE_DELTA_E = 20.0  # core pixel: within this ΔE76 of its palette colour's anchor ...
CORE_LINE_DELTA_E = 10.0  # ... or within this ΔE76 of the colour's half blend line with the background
BORDER = 2  # width of the border ring whose median is the background colour
MIN_AREA_FRAC = 0.0015  # instances smaller than this fraction of the image are dropped
ABSORB_PX = 2.0  # blend pixels within this distance of an instance's core join its mask (and count as explained for u)
ALPHA_PX = 4.0  # the coverage map of an instance spans the pixels within this distance that are nearest to it
ALPHA_FLOOR = 0.03  # coverage below this is noise (JPEG) and set to 0
FRINGE_DELTA_E = 10.0  # a pixel within this ΔE of the background→neighbour-colour blend line is a fringe pixel
FRINGE_FRAC = 0.5  # an instance mostly made of fringe pixels next to another colour is merged into it
TEMPLATE_N = 64  # template resolution for the shape fit
BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.1, 1.4, 1.8)  # blur hypotheses (px) tried by the shape fit
SMOOTH_SIGMA = 0.5  # common smoothing (px) of observed and predicted coverage before the IoU
WORK_PX = 40  # crops larger than this are area-reduced by an integer factor before the fit
CROP_PAD = 4  # pixels of context around an instance for the shape fit
CHROMA_WEIGHT = 0.05  # weight of chroma against luma in the coverage estimate (codecs blur chroma: JPEG 4:2:0)
COLOR2_FRAC = 0.10  # second colour reported when it covers at least this share of the mask

_M_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_SRGB_LUT = np.where(
    np.arange(256) / 255 <= 0.04045, np.arange(256) / 255 / 12.92, ((np.arange(256) / 255 + 0.055) / 1.055) ** 2.4
)

PALETTE_NAMES: tuple[str, ...] = tuple(vocab.COLORS)
PALETTE_RGB = np.array([vocab.COLORS[c] for c in PALETTE_NAMES], dtype=np.float64)  # (10, 3)


# ----------------------------------------------------------------------------------------------------------------
# Colour


def _lab_from_linear(lin: np.ndarray) -> np.ndarray:
    xyz = lin @ (_M_RGB_TO_XYZ / _WHITE_D65[:, None]).T
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def srgb_to_lab(rgb) -> np.ndarray:
    """sRGB (…, 3) in 0–255 (uint8 or float) → CIELAB (…, 3), D65 white."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        lin = _SRGB_LUT[rgb]
    else:
        c = np.clip(rgb.astype(np.float64) / 255, 0, 1)
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return _lab_from_linear(lin)


PALETTE_LAB = srgb_to_lab(PALETTE_RGB)  # (10, 3)
BACKGROUND_NAMES: tuple[str, ...] = tuple(vocab.BACKGROUNDS)
BACKGROUND_LAB = srgb_to_lab(np.array([vocab.BACKGROUNDS[b] for b in BACKGROUND_NAMES], dtype=np.float64))


def nearest_palette(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette colour and its ΔE76, for Lab pixels (…, 3)."""
    d = np.linalg.norm(lab[..., None, :] - PALETTE_LAB, axis=-1)  # (…, 10)
    idx = d.argmin(axis=-1)
    return idx, np.take_along_axis(d, idx[..., None], axis=-1)[..., 0]


@lru_cache(maxsize=None)
def _blend_line_lab(bg: tuple[int, int, int], color_idx: int, steps: int = 33) -> np.ndarray:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return srgb_to_lab(t * PALETTE_RGB[color_idx] + (1 - t) * np.array(bg, dtype=np.float64))  # (steps, 3)


# JPEG's YCbCr (ITU-R BT.601). Coverage weighs luma above chroma: codecs subsample and quantise chroma harder.
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_WEIGHT = np.array([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT])


def coverage(rgb: np.ndarray, bg_rgb: np.ndarray, color_rgb: np.ndarray) -> np.ndarray:
    """Per-pixel position t on the line background → colour (t·colour + (1−t)·background, in sRGB), unclipped.

    For the renderer's BOX antialiasing t is exactly the pixel's area coverage. Least squares in YCbCr with chroma
    down-weighted by CHROMA_WEIGHT.
    """
    d = (np.asarray(color_rgb, np.float64) - bg_rgb) @ _YCC.T * _YCC_WEIGHT  # (3,)
    p = (rgb.astype(np.float64) - bg_rgb) @ (_YCC.T * d)  # (..., )
    return p.sum(axis=-1) / max(float(d @ (d / _YCC_WEIGHT)), 1e-9)


def _half_lines(bg_rgb: np.ndarray, steps: int = 21) -> np.ndarray:
    """Lab samples (10, steps, 3) of each palette colour's blend line with the background, from 50% to 100% colour."""
    t = np.linspace(0.5, 1.0, steps)[None, :, None]
    return srgb_to_lab(t * PALETTE_RGB[:, None, :] + (1 - t) * np.asarray(bg_rgb, np.float64))


def label_pixels(lab: np.ndarray, bg_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette label and core flag for foreground Lab pixels (N, 3) on background `bg_rgb`.

    A pixel within CORE_DELTA_E of a palette anchor takes that colour and is core. Otherwise its label is the colour
    whose half blend line (≥ 50% colour over the background) is nearest, and it is core when within
    CORE_LINE_DELTA_E of that line. The half lines of different colours are ≥ 21.7 ΔE apart on every background, so a
    pixel that is mostly one colour (an antialiased or blurred thin stroke) keeps that colour's label instead of
    landing near a third colour.
    """
    d_anchor = np.linalg.norm(lab[:, None, :] - PALETTE_LAB[None], axis=-1)  # (N, 10)
    label = d_anchor.argmin(axis=-1)
    core = np.take_along_axis(d_anchor, label[:, None], axis=-1)[:, 0] < CORE_DELTA_E
    rest = np.flatnonzero(~core)
    if len(rest):
        lines = _half_lines(bg_rgb)  # (10, S, 3)
        d2 = ((lab[rest, None, None, :] - lines[None]) ** 2).sum(axis=-1).min(axis=-1)  # (R, 10) squared
        label[rest] = d2.argmin(axis=-1)
        core[rest] = d2.min(axis=-1) < CORE_LINE_DELTA_E**2
    return label, core


# ----------------------------------------------------------------------------------------------------------------
# Output


@dataclass(kw_only=True, eq=False)
class ParsedObject:
    """One detected instance. Boxes are in pixels, continuous coordinates (x0, y0, x1, y1), x1/y1 exclusive edges."""

    shape: str
    """Class (the best-fitting template's class)."""
    confidence: float
    """Soft IoU of the best template, in [0, 1]."""
    margin: float
    """Best IoU minus the best IoU of any other class."""
    orientation: str
    """Orientation of the best template (one of vocab.ORIENTATIONS[shape])."""
    bbox: tuple[float, float, float, float]
    """Box of the best template fit, pixels."""
    mask: np.ndarray = field(repr=False)
    """(H, W) bool: the instance's foreground pixels (its core plus the blend pixels of its blob nearest to it)."""
    color: str
    """Palette colour with most pixels in the eroded mask."""
    color2: str | None = None
    """Next colour when it covers ≥ 10% of the mask (multi-colour mode only)."""
    size_band: str = "medium"
    """vocab.size_band of max box side / image side."""
    hollow: bool = False
    """The ring (hollow) version of the fitted template fits the coverage better than the filled one."""
    area: int = 0
    """Mask pixel count."""
    scores: dict[str, float] = field(default_factory=dict, repr=False)
    """Best soft IoU per class."""

    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass(kw_only=True, eq=False)
class SceneGraph:
    """Parser output: instances (sorted by confidence, descending), background and the unexplained-pixel fraction."""

    objects: list[ParsedObject]
    background: str
    """Nearest background anchor to the border median."""
    background_rgb: tuple[int, int, int]
    """The border median itself."""
    u: float
    """Fraction of pixels that are neither background, core, nor within 2 px of a kept instance's core."""
    width: int
    height: int

    def to_scene(self) -> Scene:
        """Normalised Scene of the parsed objects (what a perfect render of this parse would be)."""
        objs = []
        for o in self.objects:
            x0, y0, x1, y1 = o.bbox
            w, h = (x1 - x0) / self.width, (y1 - y0) / self.height
            aspect = "wide" if w > 1.5 * h else ("tall" if h > 1.5 * w else "regular")
            objs.append(Obj(shape=o.shape, color=o.color, cx=(x0 + x1) / 2 / self.width,
                            cy=(y0 + y1) / 2 / self.height, size=float(np.clip(max(w, h), 1e-6, 1.0)),
                            orientation=o.orientation, aspect=aspect, hollow=o.hollow))
        return Scene(objects=objs, background=self.background)


# ----------------------------------------------------------------------------------------------------------------
# Input


def as_rgb_array(image) -> np.ndarray:
    """PIL image or uint8 (H, W, 3) array → uint8 (H, W, 3) array; ValueError on anything else."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.asarray(image)
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 (H, W, 3), got dtype {arr.dtype}")
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image array must have shape (H, W, 3), got {arr.shape}")
    else:
        raise ValueError(f"image must be a PIL image or a uint8 (H, W, 3) numpy array, got {type(image).__name__}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"image must be at least 8×8 pixels, got {arr.shape[1]}×{arr.shape[0]}")
    return arr


# ----------------------------------------------------------------------------------------------------------------
# Shape fit


@lru_cache(maxsize=None)
def _templates() -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """All (class, orientation) pairs, their float templates (K, n, n) and unit-box moments (K, 4) = mx, my, vx, vy."""
    names, temps, moments = [], [], []
    n = TEMPLATE_N
    c = (np.arange(n) + 0.5) / n
    for shape in vocab.CLASSES:
        for orient in vocab.ORIENTATIONS[shape]:
            t = template(shape, orient, n).astype(np.float64)
            px, py = t.sum(axis=0) / t.sum(), t.sum(axis=1) / t.sum()
            mx, my = (px * c).sum(), (py * c).sum()
            vx = (px * (c - mx) ** 2).sum() + 1 / (12 * n * n)
            vy = (py * (c - my) ** 2).sum() + 1 / (12 * n * n)
            names.append((shape, orient))
            temps.append(t)
            moments.append((mx, my, vx, vy))
    return names, np.stack(temps), np.array(moments)


def _overlap(n_px: int, start: np.ndarray, length: np.ndarray, n: int) -> np.ndarray:
    """(…, n_px, n): overlap length of pixel i ([i, i+1)) with template cell k of the boxes [start, start + length)."""
    edges = start[..., None] + length[..., None] * (np.arange(n + 1) / n)  # (…, n+1)
    p0 = np.arange(n_px, dtype=np.float64)[:, None]  # (n_px, 1)
    lo, hi = edges[..., None, :-1], edges[..., None, 1:]  # (…, 1, n)
    return np.clip(np.minimum(p0 + 1, hi) - np.maximum(p0, lo), 0.0, None)


@lru_cache(maxsize=512)
def _gauss_matrix(n_px: int, sigma: float) -> np.ndarray:
    """(n_px, n_px) Gaussian blur operator with zero padding (identity for sigma = 0)."""
    if sigma <= 0:
        return np.eye(n_px)
    d = np.arange(n_px)[:, None] - np.arange(n_px)[None, :]
    r = int(np.ceil(4 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g = np.exp(-0.5 * (d / sigma) ** 2) / k.sum()
    g[np.abs(d) > r] = 0.0
    return g


def fit_shape(alpha: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[tuple[float, str, str, tuple, float]]:
    """Fit every template to a soft coverage crop `alpha` (h, w) whose top-left pixel sits at `origin` = (x, y).

    For each template and each blur hypothesis σ in BLUR_SIGMAS the box is moment-matched (centroid and variance,
    corrected for pixel integration and σ²), the template's coverage is integrated over the pixel grid and blurred,
    and both maps are compared after a common SMOOTH_SIGMA smoothing (which forgives sub-pixel rasterisation noise).
    Large crops are first area-reduced so the object spans at most ~WORK_PX pixels (coverage stays exact).
    Returns [(iou, class, orientation, box, sigma)], best first; box in image pixels, sigma in image pixels.
    """
    f = max(1, int(np.ceil(max(alpha.shape) / WORK_PX)))
    if f > 1:
        h, w = -(-alpha.shape[0] // f) * f, -(-alpha.shape[1] // f) * f
        alpha = np.pad(alpha, ((0, h - alpha.shape[0]), (0, w - alpha.shape[1])))
        alpha = alpha.reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    h, w = alpha.shape
    mass = alpha.sum()
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    pxs, pys = alpha.sum(axis=0), alpha.sum(axis=1)
    mx, my = (pxs * xs).sum() / mass, (pys * ys).sum() / mass
    vx = (pxs * (xs - mx) ** 2).sum() / mass + 1 / 12
    vy = (pys * (ys - my) ** 2).sum() / mass + 1 / 12
    obs = _gauss_matrix(h, SMOOTH_SIGMA) @ alpha @ _gauss_matrix(w, SMOOTH_SIGMA).T

    names, temps, mom = _templates()  # (K, n, n), (K, 4)
    n = temps.shape[-1]
    sig = np.array([s / f for s in BLUR_SIGMAS if (s / f) ** 2 < 0.8 * min(vx, vy)])  # (J,)
    bw = np.sqrt((vx - sig[:, None] ** 2) / mom[None, :, 2])  # (J, K)
    bh = np.sqrt((vy - sig[:, None] ** 2) / mom[None, :, 3])
    bx0, by0 = mx - mom[None, :, 0] * bw, my - mom[None, :, 1] * bh
    gx = np.stack([_gauss_matrix(w, float(np.hypot(s, SMOOTH_SIGMA))) for s in sig])  # (J, w, w)
    gy = np.stack([_gauss_matrix(h, float(np.hypot(s, SMOOTH_SIGMA))) for s in sig])  # (J, h, h)
    wx = gx[:, None] @ _overlap(w, bx0, bw, n)  # (J, K, w, n)
    wy = gy[:, None] @ _overlap(h, by0, bh, n)  # (J, K, h, n)
    pred = wy @ temps[None] @ wx.swapaxes(-1, -2)  # (J, K, h, w): blurred coverage of each pixel
    inter = np.minimum(obs, pred).sum(axis=(-1, -2))
    outside = np.clip(temps.mean(axis=(1, 2))[None] * bw * bh - pred.sum(axis=(-1, -2)), 0.0, None)  # cut by crop
    iou = inter / np.maximum(np.maximum(obs, pred).sum(axis=(-1, -2)) + outside, 1e-12)  # (J, K)
    fits = []
    for j, k in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
        box = (origin[0] + f * bx0[j, k], origin[1] + f * by0[j, k],
               origin[0] + f * (bx0[j, k] + bw[j, k]), origin[1] + f * (by0[j, k] + bh[j, k]))
        fits.append((float(iou[j, k]), names[k][0], names[k][1], box, float(sig[j] * f)))
    return fits


@lru_cache(maxsize=None)
def _ring_template(shape: str, orient: str) -> np.ndarray:
    """The hollow version of a template: pixels within the renderer's ring width (city-block, as its iterated
    erosion) of the outside."""
    n = TEMPLATE_N
    t = template(shape, orient, n)
    d = ndimage.distance_transform_cdt(np.pad(t, 1), metric="taxicab")[1:-1, 1:-1]
    return (t & (d <= HOLLOW_WIDTH * n)).astype(np.float64)


def predict_coverage(t: np.ndarray, box, sigma: float, shape_hw: tuple[int, int], origin=(0, 0)) -> np.ndarray:
    """Coverage (h, w) of template `t` placed at pixel `box` (x0, y0, x1, y1), blurred by sigma (+ SMOOTH_SIGMA)."""
    h, w = shape_hw
    s = float(np.hypot(sigma, SMOOTH_SIGMA))
    wx = _gauss_matrix(w, s) @ _overlap(w, np.array(box[0] - origin[0]), np.array(box[2] - box[0]), t.shape[1])
    wy = _gauss_matrix(h, s) @ _overlap(h, np.array(box[1] - origin[1]), np.array(box[3] - box[1]), t.shape[0])
    return wy @ t @ wx.T


def is_hollow(alpha: np.ndarray, shape: str, orient: str, box, sigma: float, origin=(0, 0)) -> bool:
    """Does the (unfilled) coverage crop fit the hollow version of the fitted template better than the filled one?"""
    obs = _gauss_matrix(alpha.shape[0], SMOOTH_SIGMA) @ alpha @ _gauss_matrix(alpha.shape[1], SMOOTH_SIGMA).T
    ious = []
    for t in (template(shape, orient, TEMPLATE_N).astype(np.float64), _ring_template(shape, orient)):
        pred = predict_coverage(t, box, sigma, alpha.shape, origin)
        ious.append(np.minimum(obs, pred).sum() / max(np.maximum(obs, pred).sum(), 1e-12))
    return bool(ious[1] > ious[0])


# ----------------------------------------------------------------------------------------------------------------
# Parser

_EIGHT = np.ones((3, 3), dtype=bool)


def _fringe_merges(comp, comp_label, lab, bg_rgb) -> dict[int, int]:
    """Instances that are blend fringes of a neighbouring instance of another colour: {fringe id: neighbour id}.

    A fringe sits within ABSORB_PX of the neighbour and most of its pixels lie within FRINGE_DELTA_E of the sRGB
    blend line from the background to the neighbour's colour (e.g. noisy red-on-gray edges landing near brown).
    Genuine palette colours are ≥ 20.6 ΔE from every such line (computed over all backgrounds), so they never match.
    """
    label_map = comp_label[comp]  # (H, W), -1 where no instance
    present = np.unique(comp_label[1:])
    if len(present) < 2:
        return {}
    slices = ndimage.find_objects(comp)
    bg_key = tuple(int(round(v)) for v in bg_rgb)
    merges = {}
    for lbl in present:
        other = (comp > 0) & (label_map != lbl)
        dist, (iy, ix) = ndimage.distance_transform_edt(~other, return_indices=True)
        for c in np.flatnonzero(comp_label == lbl):
            if c == 0 or slices[c - 1] is None:
                continue
            sl = slices[c - 1]
            pix = comp[sl] == c
            near = pix & (dist[sl] <= ABSORB_PX)
            if near.sum() < FRINGE_FRAC * pix.sum():
                continue
            neighbours = comp[iy[sl][near], ix[sl][near]]
            d = int(np.bincount(neighbours).argmax())
            line = _blend_line_lab(bg_key, int(comp_label[d]))
            dl = np.linalg.norm(lab[sl][pix][:, None, :] - line[None], axis=-1).min(axis=1)
            if (dl < FRINGE_DELTA_E).mean() >= FRINGE_FRAC:
                merges[int(c)] = d
    # resolve chains (a fringe of a fringe) without cycles
    resolved = {}
    for c in merges:
        d, seen = merges[c], {c}
        while d in merges and d not in seen:
            seen.add(d)
            d = merges[d]
        if d not in seen:
            resolved[c] = d
    return resolved


def parse(image, mode: Literal["geneval", "multicolor"] = "geneval") -> SceneGraph:
    """Image (PIL or uint8 (H, W, 3)) → SceneGraph.

    mode="geneval": instances are 8-connected components per palette colour (one colour per object; GenEval/WISE).
    mode="multicolor": instances are 8-connected components of the whole foreground (objects may carry 2 colours).
    """
    if mode not in ("geneval", "multicolor"):
        raise ValueError(f"parse mode must be 'geneval' or 'multicolor', got {mode!r}")
    rgb = as_rgb_array(image)
    H, W = rgb.shape[:2]
    lab = srgb_to_lab(rgb)  # (H, W, 3)

    # background, foreground, core
    ring = np.ones((H, W), dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    bg_rgb = np.median(rgb[ring].astype(np.float64), axis=0)  # (3,)
    bg_lab = srgb_to_lab(bg_rgb)
    d_bg = np.linalg.norm(lab - bg_lab, axis=-1)
    fg = d_bg > FG_DELTA_E
    pal_idx = np.full((H, W), -1, dtype=np.int64)
    is_core = np.zeros((H, W), dtype=bool)
    packed = (rgb[fg].astype(np.int64) * np.array([65536, 256, 1])).sum(axis=-1)  # label each distinct colour once
    _, inverse = np.unique(packed, return_inverse=True)
    labels_u, core_u = label_pixels(lab[fg][np.unique(inverse, return_index=True)[1]], bg_rgb)
    pal_idx[fg], is_core[fg] = labels_u[inverse], core_u[inverse]
    core = fg & is_core

    # instances
    comp = np.zeros((H, W), dtype=np.int64)
    comp_label = [-1]  # palette index per instance id (id 0 = none)
    if mode == "geneval":
        for lbl in np.unique(pal_idx[core]):
            lab_l, n = ndimage.label(core & (pal_idx == lbl), structure=_EIGHT)
            comp[lab_l > 0] = lab_l[lab_l > 0] + len(comp_label) - 1
            comp_label += [int(lbl)] * n
    else:
        lab_fg, n = ndimage.label(fg, structure=_EIGHT)
        comp = np.where(core, lab_fg, 0)
        for c in range(1, n + 1):
            votes = np.bincount(pal_idx[lab_fg == c][core[lab_fg == c]], minlength=len(PALETTE_NAMES))
            comp_label.append(int(votes.argmax()) if votes.sum() else -1)
    comp_label = np.array(comp_label)
    fringe = np.zeros((H, W), dtype=bool)
    if mode == "geneval":
        for c, d in _fringe_merges(comp, comp_label, lab, bg_rgb).items():
            moved = comp == c
            comp[moved] = d
            fringe |= moved
    area = np.bincount(comp.ravel(), minlength=len(comp_label))
    small = area < MIN_AREA_FRAC * H * W
    small[0] = False
    comp[small[comp]] = 0

    # absorb blend pixels: a foreground pixel joins the nearest instance when it lies in the same 8-connected
    # foreground blob as that instance's core (blends, blur halos); the coverage map then extends ALPHA_PX beyond.
    has = comp > 0
    if not has.any():
        return SceneGraph(objects=[], background=_background_name(bg_lab), background_rgb=_rgb_tuple(bg_rgb),
                          u=float(fg.mean()), width=W, height=H)
    dist, (iy, ix) = ndimage.distance_transform_edt(~has, return_indices=True)
    blob, _ = ndimage.label(fg | has, structure=_EIGHT)
    member = np.where((fg | has) & (blob == blob[iy, ix]), comp[iy, ix], 0)  # (H, W) instance id of fg pixels
    dist2, (iy2, ix2) = ndimage.distance_transform_edt(member == 0, return_indices=True)
    owner = np.where(dist2 <= ALPHA_PX, member[iy2, ix2], 0)  # (H, W): support of each coverage map
    unexplained = fg & (dist > ABSORB_PX)
    core_kept = has & ~fringe

    objects = []
    for c, sl in enumerate(ndimage.find_objects(owner), start=1):
        if sl is None:
            continue
        # pad the crop so the template fit sees the soft edges
        y0, y1 = max(sl[0].start - CROP_PAD, 0), min(sl[0].stop + CROP_PAD, H)
        x0, x1 = max(sl[1].start - CROP_PAD, 0), min(sl[1].stop + CROP_PAD, W)
        region = owner[y0:y1, x0:x1] == c
        mask_crop = member[y0:y1, x0:x1] == c
        core_crop = core_kept[y0:y1, x0:x1] & (comp[y0:y1, x0:x1] == c)
        labels = pal_idx[y0:y1, x0:x1]
        votes = np.bincount(labels[core_crop], minlength=len(PALETTE_NAMES))
        if votes.sum() == 0:
            continue
        primary = int(comp_label[c]) if mode == "geneval" else int(votes.argmax())

        # soft coverage: position on the sRGB line background → object colour
        alpha = coverage(rgb[y0:y1, x0:x1], bg_rgb, PALETTE_RGB[primary])
        alpha = np.where(region & (alpha > ALPHA_FLOOR), np.clip(alpha, 0.0, 1.0), 0.0)
        if mode == "multicolor":
            alpha[core_crop] = 1.0
        solid = alpha >= 0.5
        filled = ndimage.binary_fill_holes(solid)
        alpha_fit = np.where(filled & ~solid, 1.0, alpha)
        if alpha_fit.sum() <= 0:
            continue
        fits = fit_shape(alpha_fit, (x0, y0))
        best_iou, shape, orient, box, sigma = fits[0]
        hollow = bool((filled & ~solid).any()) and is_hollow(alpha, shape, orient, box, sigma, (x0, y0))
        second = next((f[0] for f in fits if f[1] != shape), 0.0)
        scores = {}
        for f in fits:
            scores.setdefault(f[1], f[0])

        # colour: majority palette label in the 1-px-eroded mask (all of the mask when erosion empties it)
        eroded = ndimage.binary_erosion(mask_crop, structure=_EIGHT)
        pick = eroded & (labels >= 0)
        if not pick.any():
            pick = mask_crop & (labels >= 0)
        cvotes = np.bincount(labels[pick], minlength=len(PALETTE_NAMES))
        if mode == "geneval":
            color, color2 = PALETTE_NAMES[primary], None
        else:
            order = np.argsort(-cvotes)
            color = PALETTE_NAMES[order[0]]
            color2 = PALETTE_NAMES[order[1]] if cvotes[order[1]] >= COLOR2_FRAC * mask_crop.sum() else None

        mask = np.zeros((H, W), dtype=bool)
        mask[y0:y1, x0:x1] = mask_crop
        bw, bh = box[2] - box[0], box[3] - box[1]
        objects.append(ParsedObject(
            shape=shape, confidence=best_iou, margin=best_iou - second, orientation=orient,
            bbox=tuple(float(v) for v in box), mask=mask, color=color, color2=color2,
            size_band=vocab.size_band(max(bw / W, bh / H)), hollow=hollow, area=int(mask_crop.sum()), scores=scores,
        ))
    objects.sort(key=lambda o: -o.confidence)
    return SceneGraph(objects=objects, background=_background_name(bg_lab), background_rgb=_rgb_tuple(bg_rgb),
                      u=float(unexplained.mean()), width=W, height=H)


def _background_name(bg_lab: np.ndarray) -> str:
    return BACKGROUND_NAMES[int(np.linalg.norm(BACKGROUND_LAB - bg_lab, axis=-1).argmin())]


def _rgb_tuple(rgb: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(round(v)) for v in rgb)


def detections(scene_graph: SceneGraph) -> dict[str, list[tuple[np.ndarray, np.ndarray, ParsedObject]]]:
    """GenEval's detector contract: {class: [(box, mask, obj), …]} sorted by confidence, descending.

    box = float array [x0, y0, x1, y1, score] (mmdetection's bbox row); mask = (H, W) bool.
    """
    out: dict[str, list] = {}
    for o in sorted(scene_graph.objects, key=lambda o: -o.confidence):
        out.setdefault(o.shape, []).append((np.array([*o.bbox, o.confidence]), o.mask, o))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Round trip: does an image show a known scene?

CENTER_TOL = 0.03  # per-object centre tolerance, as a fraction of the image side
RELATION_TOL = 0.05  # a true relation margin this close to GenEval's 0.5 boundary is not compared (ambiguous)


def match_objects(scene: Scene, graph: SceneGraph) -> list[tuple[int, int]]:
    """Hungarian matching scene objects ↔ parsed objects; cost = class and colour mismatch + normalised centre
    distance. Returns (scene index, parsed index) pairs."""
    if not scene.objects or not graph.objects:
        return []
    cost = np.zeros((len(scene.objects), len(graph.objects)))
    for i, o in enumerate(scene.objects):
        for j, p in enumerate(graph.objects):
            px, py = p.center()
            d = np.hypot(px / graph.width - o.cx, py / graph.height - o.cy)
            cost[i, j] = 2.0 * (o.shape != p.shape) + 2.0 * (o.color != p.color) + d
    rows, cols = optimize.linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def roundtrip_report(scene: Scene, image, *, center_tol: float = CENTER_TOL,
                     relation_tol: float = RELATION_TOL) -> dict:
    """Compare the parse of `image` with `scene`: the multiset of (class, colour), every matched object's centre
    (within center_tol · side) and every pairwise GenEval relation (pairs whose true margin lies within
    relation_tol of the 0.5 boundary are skipped). `image` may also be an already parsed SceneGraph."""
    graph = image if isinstance(image, SceneGraph) else parse(image)
    want = sorted((o.shape, o.color) for o in scene.objects)
    got = sorted((o.shape, o.color) for o in graph.objects)
    report = {"ok": False, "objects_ok": want == got, "centers_ok": False, "relations_ok": False,
              "max_center_error": None, "expected": want, "parsed": got}
    if want != got:
        return report
    pairs = sorted(match_objects(scene, graph))
    W, H = graph.width, graph.height
    errors = [np.hypot(graph.objects[j].center()[0] / W - scene.objects[i].cx,
                       graph.objects[j].center()[1] / H - scene.objects[i].cy) for i, j in pairs]
    report["max_center_error"] = float(max(errors)) if errors else 0.0
    report["centers_ok"] = all(e <= center_tol for e in errors)
    true_boxes = {i: tuple(v * s for v, s in zip(scene.objects[i].box(), (W, H, W, H))) for i, _ in pairs}
    parsed_boxes = {i: graph.objects[j].bbox for i, j in pairs}
    relations_ok = True
    for a in true_boxes:
        for b in true_boxes:
            if a == b:
                continue
            truth = relative_position(true_boxes[a], true_boxes[b])
            seen = relative_position(parsed_boxes[a], parsed_boxes[b])
            for rel in vocab.RELATIONS:
                if abs(relation_margin(true_boxes[a], true_boxes[b], rel) - 0.5) < relation_tol:
                    continue
                if (rel in truth) != (rel in seen):
                    relations_ok = False
    report["relations_ok"] = relations_ok
    report["ok"] = report["centers_ok"] and relations_ok
    return report


def roundtrip_ok(scene: Scene, image) -> bool:
    """Does `image` (PIL, uint8 array or SceneGraph) show `scene`: same (class, colour) multiset, centres within
    CENTER_TOL of the side, and the same pairwise GenEval relations (ShapeRecon's scene round trip)."""
    return roundtrip_report(scene, image)["ok"]


__all__ = [
    "ParsedObject", "SceneGraph", "parse", "detections", "fit_shape", "coverage", "srgb_to_lab", "nearest_palette",
    "as_rgb_array", "match_objects", "roundtrip_report", "roundtrip_ok", "PALETTE_NAMES",
]
