"""Can decoding alone make a STAR model edit better? Two probes on ShapeImgEdit's benchmark items.

    python scripts/edit_decoding_probe.py best-of --model M --n 100 --candidates 4 --temperature 1.0
    python scripts/edit_decoding_probe.py plausible --model M --alpha 0.1 --out DIR [--guidance-scale 2]
    python scripts/edit_decoding_probe.py image-guidance --image-scale 1.5 --out DIR [--image-scale-after-change 2]

best-of: per item, the greedy edit (CFG `--guidance-scale`) and K sampled ones; each is scored by the exact ShapeImgEdit
scorer and picked by four rules: the greedy one, the first sample, the highest conditional log-likelihood, the
highest PMI (conditional minus null-row log-likelihood, both teacher-forced) and the highest guided log-likelihood.
"oracle" is the best of the K + 1 by the scorer itself: the most any selection rule could get. Prints the sample
score per type and their mean (the benchmark's overall; the first n items only).

plausible: `star eval shapes --suite imgedit` with guided decoding restricted to the codes the conditional model finds
plausible (p_cond >= alpha * max p_cond; contrastive decoding's plausibility constraint), by wrapping
`star.generate.apply_cfg` in this process. A diagnostic, not a sampling option of the package.

image-guidance: `star eval shapes --suite imgedit` (greedy, `--guidance-scale`, `--guidance-after-change`) with
InstructPix2Pix's two guidance scales: a third row per edit, the instruction's text-to-image null row (no source
image, no instruction), and logits free + s_I (null - free) + s_T (cond - null). s_I = 1 is the package's decoding;
s_I > 1 pulls every cell toward the source image. `--image-scale-after-change` switches s_I from the first code that
departs from the source, like `guidance_after_change` does for s_T. A diagnostic too (twenty-fourth session).
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


def image_guidance(args: argparse.Namespace) -> int:
    import star.pipeline
    from star.cli import main
    from star.model import Condition
    from star.sampling import sample

    edit_condition = star.pipeline.STARPipeline.edit_condition

    def edit_condition_with_free_rows(pipe, image, prompt, *, num_images=1):
        cond = edit_condition(pipe, image, prompt, num_images=num_images)
        t2i, _ = pipe.t2i_condition(prompt, num_images=num_images)
        cond.free = Condition(t2i.null_ids, t2i.null_ids, t2i.attention_mask)         # (B, T') no image, no text
        return cond

    @torch.inference_mode()
    def generate_codes(model, cond, num_tokens, *, guidance_scale, temperature, top_k, top_p, generator,
                       guidance_after_change=None):
        source = cond.source_codes.reshape(cond.batch_size, num_tokens)               # (B, N)
        s_text = torch.full((cond.batch_size, 1), float(guidance_scale))
        s_image = torch.full((cond.batch_size, 1), float(args.image_scale))
        logits, state = model.prefill(cond.with_null())                                # (2B, K)
        free_logits, free_state = model.prefill(cond.free)                             # (B, K)
        codes = []
        for i in range(num_tokens):
            c, n = logits.float().chunk(2)
            f = free_logits.float()
            code = sample(f + s_image * (n - f) + s_text * (c - n), temperature=temperature, top_k=top_k,
                          top_p=top_p, generator=generator)
            changed = (code != source[:, i])[:, None]
            if guidance_after_change is not None:
                s_text = torch.where(changed, guidance_after_change, s_text)
            s_image = torch.where(changed, args.image_scale_after_change, s_image)
            codes.append(code)
            if i + 1 < num_tokens:
                logits, state = model.step(code.repeat(2), state)
                free_logits, free_state = model.step(code, free_state)
        return torch.stack(codes, dim=1)                                               # (B, N)

    star.pipeline.STARPipeline.edit_condition = edit_condition_with_free_rows
    star.pipeline.generate_codes = generate_codes
    return main(["eval", "shapes", "--suite", "imgedit", "--model", args.model, "--out", args.out,
                 "--guidance-scale", str(args.guidance_scale), "--temperature", "0",
                 "--guidance-after-change", str(args.guidance_after_change)])


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
    g = sub.add_parser("image-guidance")
    g.add_argument("--model", default=None)
    g.add_argument("--image-scale", type=float, required=True, help="s_I; 1 = the package's decoding")
    g.add_argument("--image-scale-after-change", type=float, default=None, help="s_I once a code departs from "
                   "the source (default: --image-scale throughout)")
    g.add_argument("--out", required=True)
    g.add_argument("--guidance-scale", type=float, default=2.0)
    g.add_argument("--guidance-after-change", type=float, default=1.25)
    args = p.parse_args()
    torch.set_num_threads(1)
    from star.commands import DEFAULT_MODEL

    args.model = args.model or str(DEFAULT_MODEL)
    if args.probe == "best-of":
        if args.n < 1 or args.candidates < 1:
            raise SystemExit("--n and --candidates must be >= 1")
        best_of(args)
        return 0
    if args.probe == "image-guidance":
        if args.image_scale_after_change is None:
            args.image_scale_after_change = args.image_scale
        return image_guidance(args)
    if not 0 < args.alpha < 1:
        raise SystemExit(f"--alpha must be in (0, 1), got {args.alpha}")
    return plausible(args)


if __name__ == "__main__":
    raise SystemExit(main())
