"""What a pixel dictionary of K patches can reconstruct on its own: k-means on raw 16x16 cell patches of ShapeWorld
training scenes (the dictionary warm-up's clustering, star.vq_train.pixel_dictionary), each held-out cell replaced by
its nearest centroid, then PSNR and the scene round trip, on default and on varied scenes.

    python scripts/vq_dictionary_ceiling.py --sizes 128 512 2048
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from PIL import Image

from star.image_data import SHAPEWORLD_EVAL_SEED, ShapeWorldDataset, tensor_to_uint8
from star.shapes.parse import roundtrip_ok
from star.vq import nearest_codes, preset
from star.vq_train import pixel_dictionary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--images", type=int, default=1024, help="training images the k-means clusters")
    p.add_argument("--scenes", type=int, default=150, help="held-out scenes per row")
    args = p.parse_args()
    torch.set_num_threads(1)
    train = ShapeWorldDataset(size=50_000)
    f = 16
    print("| codes | scenes | PSNR (dB) | scene round trip |\n|---|---|---|---|")
    for k in args.sizes:
        dictionary = pixel_dictionary(train, preset("shapes", codebook_size=k), args.images, 20, seed=0)
        for varied in (0.0, 0.2):
            test = ShapeWorldDataset(size=args.scenes, varied=varied, seed=SHAPEWORLD_EVAL_SEED)
            x = torch.stack([test[i] for i in range(args.scenes)])                          # (n, 3, 128, 128)
            cells = F.pixel_unshuffle(x, f).permute(0, 2, 3, 1).reshape(-1, 3 * f * f)
            recon = dictionary[nearest_codes(cells, dictionary)[0]]
            recon = F.pixel_shuffle(recon.reshape(args.scenes, 8, 8, -1).permute(0, 3, 1, 2), f)
            psnr = 10 * torch.log10(4 / (recon - x).pow(2).mean()).item()
            ok = sum(roundtrip_ok(test.scene(i), Image.fromarray(tensor_to_uint8(recon[i:i + 1])[0]))
                     for i in range(args.scenes))
            kind = "default" if varied == 0 else "20% varied"
            print(f"| {k} | {kind} | {psnr:.1f} | {ok / args.scenes:.3f} |", flush=True)


if __name__ == "__main__":
    main()
