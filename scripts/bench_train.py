"""Training throughput of the generation stage: adapter trainable (gradient through the frozen base) vs adapter frozen
(base without a graph), on the `shapes` recipe's sizes. Prints tokens/s of both and their ratio.

    OMP_NUM_THREADS=2 python scripts/bench_train.py                      # shapes recipe sizes, 2 threads
    python scripts/bench_train.py --threads 1 --steps 6 --batch-size 16  # quicker

It times the real code path: GenerationStage.build (frozen base + VQ, stack copied from the base's top layers) and
GenerationStage.loss (chat rows -> Condition -> STAR.forward), then backward and an AdamW step, as the trainer does.
The base is the recipe's tiny base with random weights (speed does not depend on the weights); prompts are real
ShapeWorld T2I prompts and the targets random codes. Tokens = prompt tokens (chat template included) + image codes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="shapes", help="recipe whose generation stage sizes to use")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vq", default=None,
                        help="VQ folder (default: the shipped one, else the random shapes preset)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch

    from star.training.recipes import get_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe, "unused")
    entry = recipe.stage("generation")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        return _bench(args, recipe, entry, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args, recipe, entry, tmp: Path) -> int:
    import numpy as np
    import torch

    from star.chat import t2i_row
    from star.shapes.text import random_geneval_metadata
    from star.training.config import apply_overrides
    from star.training.recipes import build_base
    from star.training.stage_generation import GenBatch, GenerationStage
    from star.vq import SHIPPED_SHAPES_DIR, VQModel, preset

    build_base(recipe.base, tmp / "base", log=lambda m: None)
    vq = args.vq
    if vq is None:
        if (SHIPPED_SHAPES_DIR / "model.safetensors").is_file():
            vq = str(SHIPPED_SHAPES_DIR)
        else:
            torch.manual_seed(0)
            VQModel(preset("shapes")).save_pretrained(tmp / "vq")
            vq = str(tmp / "vq")
    batch_size = args.batch_size or entry.config.batch_size
    rng = np.random.default_rng(0)
    prompts = [random_geneval_metadata(rng)["prompt"] for _ in range(batch_size)]
    results = {}
    for train_adapter in (True, False):
        config = apply_overrides(entry.config, [
            f"stage_options.base={json.dumps(str(tmp / 'base'))}", f"stage_options.vq={json.dumps(vq)}",
            f"stage_options.train_adapter={json.dumps(train_adapter)}", "device=\"cpu\""])
        stage = GenerationStage("generation")
        torch.manual_seed(0)
        model = stage.build(config, torch.device("cpu"), torch.float32)
        model.train()
        model.base.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        tok = model.base.tokenizer
        rows = [t2i_row(tok, model.special, p) for p in prompts]
        n = model.num_image_tokens
        batch = GenBatch(rows=rows, targets=[torch.randint(0, model.config.head.codebook_size, (n,))
                                             for _ in rows],
                         drop=torch.zeros(len(rows), dtype=torch.bool), sources=[], pixel_values=None,
                         image_grid_thw=None, kinds=["t2i"] * len(rows))
        times, tokens, image_tokens = [], 0.0, 0.0
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss, metrics = stage.loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
                tokens, image_tokens = metrics["tokens"], metrics["image_tokens"]
        median = float(np.median(times))
        key = "adapter_trainable" if train_adapter else "adapter_frozen"
        results[key] = {"step_s_median": median, "tokens_per_s": tokens / median,
                        "image_tokens_per_s": image_tokens / median, "trainable_params": sum(p.numel() for p in params)}
        print(f"{key:18s} trainable {results[key]['trainable_params']:,} params | step {median:.3f} s (median of "
              f"{len(times)}) | {tokens / median:,.0f} tokens/s | {image_tokens / median:,.0f} image tokens/s",
              flush=True)
        del model, opt
    ratio = results["adapter_frozen"]["tokens_per_s"] / results["adapter_trainable"]["tokens_per_s"]
    results.update(ratio_frozen_over_trainable=ratio, batch_size=batch_size, threads=torch.get_num_threads(),
                   recipe=args.recipe, vq=vq, prompt_tokens_mean=float(np.mean([len(r.ids) for r in rows])),
                   image_tokens_per_sample=n)
    print(f"ratio (adapter frozen / adapter trainable): {ratio:.2f}x  [batch {batch_size}, "
          f"{torch.get_num_threads()} threads, {results['prompt_tokens_mean']:.1f} prompt + {n} image tokens/sample]")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
