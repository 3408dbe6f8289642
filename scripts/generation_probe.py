"""Does a trained STAR model use its prompt? Three diagnostics for the generation stage.

    python scripts/generation_probe.py --model runs/shapes/generation/export --data runs/shapes/data/t2i

1. Prompt reliance: teacher-forced code loss of t2i records with their own prompt, the CFG null prompt and another
   record's prompt (rotated across the batch).
2. Decoding consistency: logits of incremental decoding (prefill + step, the inference path) against the
   teacher-forced forward on the same codes.
3. Prompt features: a linear probe of the frozen base's hidden state at `<|vision_start|>` (the position that predicts
   the first code) for the prompt's first colour word and first class word.
4. First object tile: on `colors` records (one named object), the probability of the true code at the first cell
   that is not background, given that it is not background (own prompt, another record's, the null prompt): how
   much the prompt decides class and colour where the object starts.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="STAR model folder")
    p.add_argument("--data", required=True, help="a star-records dataset with t2i records")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--probe-prompts", type=int, default=3000, help="records read (probes 3 and 4 use them)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from star.chat import t2i_row
    from star.data.records import RecordReader
    from star.model import STAR, Condition
    from star.shapes import vocab
    from star.training.data import load_rgb
    from star.views import vq_pixels

    cpu = torch.device("cpu")
    model = STAR.from_pretrained(args.model, device=cpu, dtype=torch.float32).eval()
    tokenizer = model.base.tokenizer
    records = [r for r in itertools.islice(RecordReader(args.data, kinds="t2i"), args.probe_prompts)]
    batch = records[: args.batch]
    rows = [t2i_row(tokenizer, model.special, r["text"]) for r in batch]
    side = model.vq.config.resolution
    with torch.no_grad():
        codes = model.vq.encode(torch.stack([vq_pixels(load_rgb(r["image"]), side) for r in batch])).flatten(1)
        keep = torch.zeros(len(rows), dtype=torch.bool)

        def loss(rs, drop):
            return model(Condition.from_rows(rs, model.special.end_of_text, device=cpu), codes, drop_prompt=drop).loss

        own, null = loss(rows, keep).item(), loss(rows, ~keep).item()
        other = loss(rows[1:] + rows[:1], keep).item()
        print(f"code loss (nats): own prompt {own:.4f}, null prompt {null:.4f}, another record's prompt {other:.4f}")

        cond = Condition.from_rows(rows[:4], model.special.end_of_text, device=cpu)
        forced = model(cond, codes[:4], drop_prompt=keep[:4]).logits                     # (4, N, K)
        logits, state = model.prefill(cond)
        steps = [logits]
        for t in range(codes.shape[1] - 1):
            logits, state = model.step(codes[:4, t], state)
            steps.append(logits)
        gap = (forced - torch.stack(steps, 1)).abs().max().item()
        print(f"incremental decoding vs teacher forcing: max |logit difference| {gap:.2e}")

        singles = [r for r in records if r.get("meta", {}).get("tag") == "colors"][: args.batch]
        if singles:
            srows = [t2i_row(tokenizer, model.special, r["text"]) for r in singles]
            scodes = model.vq.encode(torch.stack([vq_pixels(load_rgb(r["image"]), side) for r in singles])).flatten(1)
            background = torch.mode(scodes.flatten()).values
            first = (scodes != background).int().argmax(1)                              # (S,) first object cell
            rows_idx = torch.arange(len(singles))

            def first_tile(rs, drop):
                cond = Condition.from_rows(rs, model.special.end_of_text, device=cpu)
                probs = model(cond, scodes, drop_prompt=drop).logits.float().softmax(-1)[rows_idx, first]   # (S, K)
                return (probs[rows_idx, scodes[rows_idx, first]] / (1 - probs[:, background])).mean().item()

            skeep = torch.zeros(len(singles), dtype=torch.bool)
            print(f"first object tile, P(true code | not background) on {len(singles)} colors records: own prompt "
                  f"{first_tile(srows, skeep):.3f}, another record's {first_tile(srows[1:] + srows[:1], skeep):.3f}, "
                  f"null {first_tile(srows, ~skeep):.3f}")

        colours, feats, first_colour, first_class = list(vocab.COLORS), [], [], []
        for r in records:
            words = r["text"].split()
            cs = [w for w in words if w in colours]
            ks = [w.rstrip("s") for w in words if w.rstrip("s") in vocab.CLASSES]
            if not cs or not ks:
                continue
            c = Condition.from_rows([t2i_row(tokenizer, model.special, r["text"])], model.special.end_of_text,
                                    device=cpu)
            seq = model.embed(c)
            feats.append(model.base(seq.embeds, seq.attention_mask, seq.position_ids, None)[0, -1])
            first_colour.append(colours.index(cs[0]))
            first_class.append(vocab.CLASSES.index(ks[0]))
    x = torch.stack(feats)
    n = len(x) * 4 // 5
    x = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-6)
    for name, labels in (("first colour", first_colour), ("first class", first_class)):
        y = torch.tensor(labels)
        lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
        opt = torch.optim.Adam(lin.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x[:n]), y[:n]).backward()
            opt.step()
        with torch.no_grad():
            acc = (lin(x[n:]).argmax(-1) == y[n:]).float().mean().item()
        print(f"base state at <|vision_start|> -> {name}: linear probe {acc:.3f} ({len(x) - n} held-out prompts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
