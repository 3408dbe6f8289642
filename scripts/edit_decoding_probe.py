"""Can decoding alone make a STAR model edit better? Two probes on ShapeImgEdit's benchmark items.

    python scripts/edit_decoding_probe.py best-of --model M --n 100 --candidates 4 --temperature 1.0
    python scripts/edit_decoding_probe.py plausible --model M --alpha 0.1 --out DIR [--guidance-scale 2]

best-of: per item, the greedy edit (CFG `--guidance-scale`) and K sampled ones; each is scored by the exact ShapeImgEdit
scorer and picked by four rules: the greedy one, the first sample, the highest conditional log-likelihood, the
highest PMI (conditional minus null-row log-likelihood, both teacher-forced) and the highest guided log-likelihood.
"oracle" is the best of the K + 1 by the scorer itself: the most any selection rule could get. Prints the sample
score per type and their mean (the benchmark's overall; the first n items only).

plausible: `star eval shapes --suite imgedit` with guided decoding restricted to the codes the conditional model finds
plausible (p_cond >= alpha * max p_cond; contrastive decoding's plausibility constraint), by wrapping
`star.generate.apply_cfg` in this process. A diagnostic, not a sampling option of the package.
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics

import torch


def best_of(args: argparse.Namespace) -> None:
    from star.generate import generate_codes
    from star.pipeline import STARPipeline
    from star.sampling import apply_cfg
    from star.shapes import edits, imgedit

    pipe = STARPipeline.from_pretrained(args.model)
    model, k = pipe.model.eval(), args.candidates
    rules = collections.defaultdict(lambda: collections.defaultdict(list))
    for i, item in enumerate(edits.imgedit_items(200, 0)[:args.n]):
        source = edits.render_source(item, model.vq.config.resolution)
        with torch.inference_mode():
            greedy = generate_codes(model, pipe.edit_condition(source, item.instruction), model.num_image_tokens,
                                    guidance_scale=args.guidance_scale, temperature=0.0)
            generators = [torch.Generator().manual_seed(1000 * i + j) for j in range(k)]
            sampled = generate_codes(model, pipe.edit_condition(source, item.instruction, num_images=k),
                                     model.num_image_tokens, guidance_scale=args.guidance_scale,
                                     temperature=args.temperature, generator=generators)
            codes = torch.cat([greedy, sampled])                                          # (K+1, N)
            cond = pipe.edit_condition(source, item.instruction, num_images=k + 1)
            log_cond = model(cond, codes, drop_prompt=torch.zeros(k + 1, dtype=torch.bool)).logits.float()
            log_null = model(cond, codes, drop_prompt=torch.ones(k + 1, dtype=torch.bool)).logits.float()
            log_cond, log_null = log_cond.log_softmax(-1), log_null.log_softmax(-1)        # (K+1, N, V)
            log_guided = apply_cfg(log_cond, log_null, args.guidance_scale).log_softmax(-1)
            total = lambda logp: logp.gather(-1, codes[..., None])[..., 0].sum(-1)          # noqa: E731  (K+1,)
            ll_cond, ll_null, ll_guided = total(log_cond), total(log_null), total(log_guided)
        images, _ = pipe._decode(codes)
        score = torch.tensor([imgedit.score_item(item, im)["sample"] for im in images])
        r = rules[item.edit_type]
        r["greedy"].append(float(score[0]))
        r["sample"].append(float(score[1]))
        r["cond_ll"].append(float(score[ll_cond.argmax()]))
        r["pmi"].append(float(score[(ll_cond - ll_null).argmax()]))
        r["guided_ll"].append(float(score[ll_guided.argmax()]))
        r["oracle"].append(float(score.max()))
    names = ["greedy", "sample", "cond_ll", "pmi", "guided_ll", "oracle"]
    print(f"{'type':10s} " + " ".join(f"{x:>9s}" for x in names))
    for t, r in sorted(rules.items()):
        print(f"{t:10s} " + " ".join(f"{statistics.mean(r[x]):9.2f}" for x in names) + f"   n={len(r['greedy'])}")
    means = [statistics.mean(statistics.mean(r[x]) for r in rules.values()) for x in names]
    print(f"{'overall':10s} " + " ".join(f"{m:9.2f}" for m in means))


def plausible(args: argparse.Namespace) -> int:
    import star.generate
    from star.cli import main
    from star.sampling import apply_cfg

    log_alpha = math.log(args.alpha)

    def apply_cfg_plausible(cond, uncond, scale):
        logp = cond.float().log_softmax(-1)
        keep = logp >= logp.max(-1, keepdim=True).values + log_alpha
        return apply_cfg(cond, uncond, scale).masked_fill(~keep, float("-inf"))

    star.generate.apply_cfg = apply_cfg_plausible
    return main(["eval", "shapes", "--suite", "imgedit", "--model", args.model, "--out", args.out,
                 "--guidance-scale", str(args.guidance_scale), "--temperature", "0"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="probe", required=True)
    b = sub.add_parser("best-of")
    b.add_argument("--model", default=None, help="STAR folder (default: the shipped model)")
    b.add_argument("--n", type=int, default=100, help="the benchmark's first n items")
    b.add_argument("--candidates", type=int, default=4, help="sampled edits per item, besides the greedy one")
    b.add_argument("--temperature", type=float, default=1.0)
    b.add_argument("--guidance-scale", type=float, default=2.0)
    q = sub.add_parser("plausible")
    q.add_argument("--model", default=None)
    q.add_argument("--alpha", type=float, required=True, help="keep codes with p_cond >= alpha * max p_cond")
    q.add_argument("--out", required=True)
    q.add_argument("--guidance-scale", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    from star.commands import DEFAULT_MODEL

    args.model = args.model or str(DEFAULT_MODEL)
    if args.probe == "best-of":
        if args.n < 1 or args.candidates < 1:
            raise SystemExit("--n and --candidates must be >= 1")
        best_of(args)
        return 0
    if not 0 < args.alpha < 1:
        raise SystemExit(f"--alpha must be in (0, 1), got {args.alpha}")
    return plausible(args)


if __name__ == "__main__":
    raise SystemExit(main())
