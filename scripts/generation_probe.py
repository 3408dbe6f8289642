"""Does a trained STAR model use its prompt? Three diagnostics for the generation stage.

    python scripts/generation_probe.py --model runs/shapes/generation/export --data runs/shapes/data/t2i

1. Prompt reliance: teacher-forced code loss of t2i records with their own prompt, the CFG null prompt and another
   record's prompt (rotated across the batch).
2. Decoding consistency: logits of incremental decoding (prefill + step, the inference path) against the
   teacher-forced forward on the same codes.
3. First object tile: on `colors` records (one named object), the probability of the true code at the first cell
   that is not background, given that it is not background (own prompt, another record's, the null prompt): how
   much the prompt decides class and colour where the object starts.
4. Where the prompt is lost: at the position that predicts that first object tile, a linear probe (held-out
   accuracy) of the object's colour and class from the stack's input (the base's output) and after every stack
   layer. High at the input and low at the top means the stack discards what the base delivered.
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

        singles = [r for r in records if r.get("meta", {}).get("tag") == "colors"]
        if len(singles) < 50:
            print(f"probes 3-4 need >= 50 colors records among the first {args.probe_prompts}; found {len(singles)}")
            return 0
        background = torch.mode(codes.flatten()).values
        states, tile_probs, colour, shape = [], {"own": [], "other": [], "null": []}, [], []
        for i in range(0, len(singles), args.batch):
            chunk = singles[i:i + args.batch]
            srows = [t2i_row(tokenizer, model.special, r["text"]) for r in chunk]
            scodes = model.vq.encode(torch.stack([vq_pixels(load_rgb(r["image"]), side) for r in chunk])).flatten(1)
            first = (scodes != background).int().argmax(1)                              # (S,) first object cell
            rows_idx = torch.arange(len(chunk))
            for name, rs, drop in (("own", srows, False), ("other", srows[1:] + srows[:1], False),
                                   ("null", srows, True)):
                cond = Condition.from_rows(rs, model.special.end_of_text, device=cpu)
                probs = model(cond, scodes, drop_prompt=torch.full((len(chunk),), drop)).logits.float().softmax(-1)
                probs = probs[rows_idx, first]                                         # (S, K)
                tile_probs[name].append(probs[rows_idx, scodes[rows_idx, first]] / (1 - probs[:, background]))
            seq = model.embed(Condition.from_rows(srows, model.special.end_of_text, device=cpu), scodes[:, :-1])
            h = model.base(seq.embeds, seq.attention_mask, seq.position_ids, layer=model.config.base_layer)
            at = h.shape[1] - scodes.shape[1] + first                                   # (S,) predicts `first`
            layers = [h[rows_idx, at]]
            for stack in model.stacks:
                out = stack.decoder(inputs_embeds=h, attention_mask=seq.attention_mask,
                                    position_ids=seq.position_ids, output_hidden_states=True)
                layers += [x[rows_idx, at] for x in out.hidden_states[1:]]
                h = out.last_hidden_state
            states.append(torch.stack(layers, 1))                                       # (S, 1 + layers, D)
            obj = [r["meta"]["scene"]["objects"][0] for r in chunk]
            colour += [list(vocab.COLORS).index(o["color"]) for o in obj]
            shape += [list(vocab.CLASSES).index(o["shape"]) for o in obj]
        means = {k: torch.cat(v).mean().item() for k, v in tile_probs.items()}
        print(f"first object tile, P(true code | not background) on {len(singles)} colors records: own prompt "
              f"{means['own']:.3f}, another record's {means['other']:.3f}, null {means['null']:.3f}")
    x = torch.cat(states)                                                               # (S, 1 + layers, D)
    for name, labels in (("colour", colour), ("class", shape)):
        accs = " ".join(f"{linear_probe(x[:, i], torch.tensor(labels)):.2f}" for i in range(x.shape[1]))
        print(f"where the first tile is predicted, {name} by a linear probe: stack input, then after each stack "
              f"layer (the last after the final norm): {accs}")
    return 0


def linear_probe(x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy (last fifth) of a linear classifier on standardised features x (S, D)."""
    n = len(x) * 4 // 5
    x = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-6)
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[:n]), y[:n]).backward()
        opt.step()
    with torch.no_grad():
        return (lin(x[n:]).argmax(-1) == y[n:]).float().mean().item()


if __name__ == "__main__":
    sys.exit(main())
