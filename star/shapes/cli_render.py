"""`star shapes render`: render a ShapeWorld scene to a PNG (the demo scene, a JSON scene spec, or a random scene)."""

from __future__ import annotations

import argparse
import io
import os

import numpy as np

from star.shapes import vocab
from star.shapes.render import demo_scene, render
from star.shapes.sample import random_scene
from star.shapes.scene import Scene
from star.shapes.text import caption


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--scene", metavar="JSON_FILE", help="a scene spec (Scene.to_json) to render")
    src.add_argument("--random", action="store_true", help="a random training-split scene (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random scene (default 0)")
    parser.add_argument("--n-objects", type=int, default=None, help="objects in the random scene (default 1-4)")
    parser.add_argument("--unaligned", action="store_true", help="random scene off the grid (continuous placement)")
    parser.add_argument("--resolution", "-r", type=int, default=vocab.DEFAULT_RESOLUTION,
                        help=f"image side in pixels (default {vocab.DEFAULT_RESOLUTION})")
    parser.add_argument("-o", "--out", default="shapeworld.png", help="output PNG (default shapeworld.png)")
    parser.add_argument("--print-scene", action="store_true", help="also print the scene spec as JSON")


def run(args: argparse.Namespace) -> int:
    if args.scene:
        with open(args.scene) as f:
            scene = Scene.from_json(f.read())
    elif args.random:
        scene = random_scene(np.random.default_rng(args.seed), aligned=not args.unaligned, n_objects=args.n_objects)
    else:
        scene = demo_scene()
    image = render(scene, args.resolution)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, out)
    print(f"wrote {args.out} ({args.resolution}x{args.resolution}): {caption(scene)}")
    if args.print_scene:
        print(scene.to_json())
    return 0
