"""Benchmark the packed layouts: next-token only vs our single pass vs three passes vs padded.

Layouts of one pair example (T = text view, C = code view, k predictor tokens), DESIGN.md
sections 2 and 8:

    (a) next-token only, packed   [T C]                               |T|+|C| tokens
    (b) single pass, packed       [T C p1..pk] [C]  (one row, masked) |T|+2|C|+k
    (c) three passes, packed      pass 1 [T C], pass 2 [T p1..pk], pass 3 [C], each pass
                                  packed into its own rows           2|T|+2|C|+k
    (d) reference, padded         the same three sequences, each padded to --pad-len
                                  (one sequence per row)              3 * pad_len

Part 1 counts, over the whole file, the tokens computed per example and the rows one epoch
needs at each --seq-lens, with the packer of megajepa.layout (best fit, file order, window
1024). "Real" tokens are the non-padding tokens of the rows, so packing efficiency is
real tokens / (rows * seq_len). Rows of (c) are the sum of the three passes' rows. Rows of (d)
are one row of pad_len per sequence: 3 rows per example (pad_len = 512 capacity each).

Part 2 times one forward + backward on the tiny preset (CPU, sdpa, fp32), side by side in one
run, interleaved (a b c c* d, a b c c* d, ...) after warm-up, medians over --reps:

    (a)  forward(model, batch_without_jepa)                     next-token loss only
    (b)  forward(model, batch_with_jepa, mode="single_pass")    our layout
    (c)  forward(model, batch_with_jepa, mode="three_pass")     the oracle of objective.py,
         which repacks the three passes from (b)'s batch inside the step (timed: full cost)
    (c*) the same three passes pre-packed outside the step: compute only, no repacking
    (d)  the three passes padded to pad_len, on the first --padded-examples examples only;
         compared to (b) per example

All variants use the same examples: the first examples of the file that fill --time-rows
rows of (b) at --time-seq-len. Every variant's loss is checked against (b)'s (they compute
the same objective; (a) only its next-token part).

    python scripts/bench/layouts.py --out runs/layouts.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import (device_name, finish, interleaved, longest_prefix,  # noqa: E402
                           markdown_table, paired_ratio, spread)
from megajepa.layout import Example, layout_cost, pack, plan_rows  # noqa: E402

GENERATED = 8000  # pairs of the embedded NL-RX generator when no --data is given (NL-RX-SYNTH's size)
WINDOW = 1024  # pack()'s default best-fit window


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Layouts and counting rules: see the module docstring.")
    p.add_argument("--data", default=None,
                   help="chat-messages JSONL of pair records, e.g. nlrx_synth_train.jsonl (docs/data.md); "
                        f"default: {GENERATED} pairs of the embedded NL-RX generator (seed 0)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory; default: train a SentencePiece BPE on --data into a temp dir")
    p.add_argument("--vocab-size", type=int, default=1000,
                   help="vocabulary of the trained tokenizer, specials included (default 1000)")
    p.add_argument("--k", type=int, default=3, help="predictor tokens per example (default 3)")
    p.add_argument("--seq-lens", default="1024,4096",
                   help="comma list of row lengths in tokens for the counts of (a)-(c) (default 1024,4096)")
    p.add_argument("--pad-len", type=int, default=512,
                   help="length in tokens each sequence is padded to in (d) (default 512)")
    p.add_argument("--time-seq-len", type=int, default=1024,
                   help="row length in tokens for the step timings (default 1024)")
    p.add_argument("--time-rows", type=int, default=8,
                   help="rows of (b) the timed examples fill (default 8)")
    p.add_argument("--padded-examples", type=int, default=8,
                   help="examples in the timed padded step (d); 0 skips it (default 8: 24 rows of pad-len)")
    p.add_argument("--reps", type=int, default=30, help="timed repetitions per variant (default 30)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions per variant first (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help=f"torch.set_num_threads (default: the machine's cores, {os.cpu_count()})")
    p.add_argument("--seed", type=int, default=0, help="model init seed (default 0)")
    p.add_argument("--skip-timing", action="store_true", help="only part 1 (counts)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here too (default: print only)")
    args = p.parse_args(argv)
    args.seq_lens = [int(x) for x in args.seq_lens.split(",")]
    return args


# --- part 1: token and row counts -------------------------------------------------------

def three_pass_sequences(lengths, k):
    """Lengths of the paper's three sequences of a pair: text+code, text+k preds, code."""
    t, c = lengths
    return [t + c, t + k, c]


def layout_counts(pairs, seq_len, k, *, pad_len=512):
    """Tokens and rows of one epoch of ``pairs`` (``(|T|, |C|)`` per example) per layout.

    Returns ``{name: dict(real, rows, capacity, dropped)}``; ``real`` counts non-padding
    tokens. (a)-(c) are packed into rows of ``seq_len`` by ``plan_rows`` (file order); (d) puts
    each of the three sequences in its own row of ``pad_len`` (sequences longer than
    ``pad_len`` would be truncated to it: counted in ``dropped``).
    """
    def packed(costs):
        costs = np.asarray(costs, dtype=np.int64)
        rows = len(plan_rows(costs, seq_len, window=WINDOW))
        fit = costs <= seq_len
        return dict(real=int(costs[fit].sum()), rows=rows, capacity=rows * seq_len,
                    dropped=int((~fit).sum()))

    lm = [layout_cost("pair", l, k=k, jepa=False) for l in pairs]
    single = [layout_cost("pair", l, k=k) for l in pairs]
    passes = list(zip(*[three_pass_sequences(l, k) for l in pairs])) if pairs else [[], [], []]
    three = [packed(p) for p in passes]
    out = {"a": packed(lm), "b": packed(single),
           "c": {key: sum(p[key] for p in three) for key in ("real", "rows", "capacity", "dropped")}}
    seqs = np.asarray([s for p in passes for s in p], dtype=np.int64)
    out["d"] = dict(real=int(np.minimum(seqs, pad_len).sum()), rows=len(seqs),
                    capacity=len(seqs) * pad_len, dropped=int((seqs > pad_len).sum()))
    return out


# --- part 2: step timings ---------------------------------------------------------------

def _last_token_index(plan, lengths, seq_len):
    """Flat index of the last token of each item laid out by ``pack(..., rows=plan)``."""
    out = [0] * len(lengths)
    for r, members in enumerate(plan):
        cursor = 0
        for i in members:
            cursor += lengths[i]
            out[i] = r * seq_len + cursor - 1
    return out


def build_three_passes(views, k, pred_ids, pad_id, seq_len, *, padded=False):
    """The three passes of ``views`` as packed batches (``padded``: one sequence per row of
    ``seq_len``) plus the flat (pred, target) read-out indices into [pass 2 ; pass 3]."""
    preds = list(pred_ids[:k])
    lm = [Example("pair", v, jepa=False) for v in views]
    src = [Example("lm", [list(t) + preds]) for t, _ in views]   # text + predictors, causal
    tgt = [Example("lm", [list(c)]) for _, c in views]            # code alone
    batches, lasts = [], []
    for exs in (lm, src, tgt):
        lengths = [e.num_tokens for e in exs]
        plan = [[i] for i in range(len(exs))] if padded else plan_rows(lengths, seq_len, window=WINDOW)
        batches.append(pack(exs, seq_len, k=k, pred_ids=preds, pad_id=pad_id, rows=plan))
        lasts.append(_last_token_index(plan, lengths, seq_len))
    off = batches[1].input_ids.numel()
    pred_index = torch.tensor(lasts[1], dtype=torch.long)
    target_index = torch.tensor([off + i for i in lasts[2]], dtype=torch.long)
    return batches, pred_index, target_index


def three_pass_step(model, batches, pred_index, target_index):
    """lm_loss + cosine JEPA loss from three separate forwards (no repacking in the step)."""
    from megajepa.objective import hidden_states, jepa_loss_sum, lm_head, lm_loss_sum

    hid = [hidden_states(model, b.input_ids, b.position_ids, b.doc_ids, b.roles) for b in batches]
    lm = lm_loss_sum(hid[0], batches[0].labels, lm_head(model)) / max(batches[0].num_label_tokens, 1)
    flat = torch.cat([h.reshape(-1, h.shape[-1]) for h in hid[1:]])
    jepa, _ = jepa_loss_sum(flat, pred_index, target_index)
    return lm + jepa / max(pred_index.numel(), 1)


def timing_examples(views, k, seq_len, rows):
    """The longest prefix of ``views`` whose (b) layout packs into at most ``rows`` rows."""
    costs = [layout_cost("pair", [len(t), len(c)], k=k) for t, c in views]
    return views[:longest_prefix(len(views), lambda m: len(plan_rows(costs[:m], seq_len, window=WINDOW)), rows)]


def time_steps(model, variants, reps, warmup):
    """Interleaved forward+backward timings: {name: [seconds per rep]} and {name: loss}."""
    def fwd_bwd(fn):
        def step():
            loss = fn()
            loss.backward()
            return loss
        return step

    times, last = interleaved({name: fwd_bwd(fn) for name, fn in variants.items()}, reps, warmup,
                              before=lambda: model.zero_grad(set_to_none=True), progress=True)
    return times, {name: float(loss.detach()) for name, loss in last.items()}


# --- driver -------------------------------------------------------------------------------

def load_views(args):
    from data_tools.preprocess import encode_records
    from data_tools.readers import read_records
    from data_tools.tokenizer import load_tokenizer, pred_ids, train_sentencepiece

    if args.data is None:  # the generator's pairs, read back through the same readers
        from data_tools import nlrx

        args.data_desc = f"{GENERATED} pairs of the embedded NL-RX generator (seed 0)"
        with tempfile.TemporaryDirectory(prefix="bench_layouts_data_") as tmp:
            path = os.path.join(tmp, "generated_pairs.jsonl")
            with open(path, "w") as fh:
                for r in nlrx.generate_pairs(GENERATED, seed=0):
                    fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
            records = list(read_records(path))
    else:
        args.data_desc = f"`{args.data}`"
        records = list(read_records(args.data))
    if any(r.kind != "pair" for r in records):
        raise SystemExit(f"error: {args.data}: expected chat (pair) records only")
    if args.tokenizer:
        tok, _ = load_tokenizer(args.tokenizer, k=max(args.k, 1))
        tok_desc = args.tokenizer
    else:
        texts = [s for r in records for s in (r.data["user"], r.data["assistant"])]
        tok = train_sentencepiece(texts, tempfile.mkdtemp(prefix="bench_layouts_tok_"),
                                  vocab_size=args.vocab_size, k=max(args.k, 1))
        tok_desc = f"SentencePiece BPE trained on --data, vocab {len(tok)}"
    views = [v for v in encode_records(tok, records)]
    bad = [v for v in views if isinstance(v, Exception)]
    if bad:
        raise SystemExit(f"error: {bad[0]}")
    return tok, tok_desc, pred_ids(tok), views


NAMES = {"a": "(a) next-token only, packed", "b": "(b) single pass, packed",
         "c": "(c) three passes, packed", "d": "(d) three passes, padded"}


def counts_section(args, views):
    pairs = [(len(t), len(c)) for t, c in views]
    n = len(pairs)
    per_len = {s: layout_counts(pairs, s, args.k, pad_len=args.pad_len) for s in args.seq_lens}
    t_mean = sum(p[0] for p in pairs) / n
    c_mean = sum(p[1] for p in pairs) / n
    s0 = args.seq_lens[0]
    header = ["layout", "real tokens / example"]
    for s in args.seq_lens:
        header += [f"rows @{s}", f"efficiency @{s}", f"capacity / example @{s}"]
    header += ["vs (b) @%d" % s0]
    rows = []
    for key in "abc":
        r = [NAMES[key], f"{per_len[s0][key]['real'] / n:.2f}"]
        for s in args.seq_lens:
            c = per_len[s][key]
            r += [f"{c['rows']:,}", f"{c['real'] / c['capacity']:.1%}", f"{c['capacity'] / n:.1f}"]
        r.append(f"{per_len[s0][key]['capacity'] / per_len[s0]['b']['capacity']:.2f}x")
        rows.append(r)
    d = per_len[s0]["d"]
    r = [NAMES["d"] + f" to {args.pad_len}", f"{d['real'] / n:.2f}"]
    for _ in args.seq_lens:
        r += [f"{d['rows']:,} (of {args.pad_len})", f"{d['real'] / d['capacity']:.1%}",
              f"{d['capacity'] / n:.1f}"]
    r.append(f"{d['capacity'] / per_len[s0]['b']['capacity']:.2f}x")
    rows.append(r)
    dropped = {s: {k: v["dropped"] for k, v in per_len[s].items() if v["dropped"]} for s in args.seq_lens}
    text = [f"{n:,} pair examples; mean |T| = {t_mean:.2f}, |C| = {c_mean:.2f} tokens, k = {args.k}.",
            "",
            markdown_table(header, rows),
            "",
            "\"capacity / example\" = rows x row length / examples: tokens the model computes per example, "
            "padding included; \"vs (b)\" compares that capacity at the first row length. "
            f"Rows of (d): one row of {args.pad_len} per sequence, 3 per example. "
            f"Examples too long for a row (dropped or truncated): {dropped if any(dropped.values()) else 'none'}."]
    return "\n".join(text), per_len


def timing_section(args, tok, pred, views):
    from megajepa.model import build_model
    from megajepa.objective import forward

    torch.set_num_threads(args.threads)
    pad_id = tok.pad_token_id
    s, k = args.time_seq_len, args.k
    ex_views = timing_examples(views, k, s, args.time_rows)
    n = len(ex_views)
    model = build_model(preset="tiny", vocab_size=len(tok), seed=args.seed)
    model.train()
    kw = dict(k=k, pred_ids=pred, pad_id=pad_id)
    batch_a = pack([Example("pair", v, jepa=False) for v in ex_views], s, **kw)
    batch_b = pack([Example("pair", v) for v in ex_views], s, **kw)
    three, p_idx, t_idx = build_three_passes(ex_views, k, pred, pad_id, s)
    variants = {
        "a": lambda: forward(model, batch_a).loss,
        "b": lambda: forward(model, batch_b, mode="single_pass").loss,
        "c": lambda: forward(model, batch_b, mode="three_pass").loss,
        "c*": lambda: three_pass_step(model, three, p_idx, t_idx),
    }
    shapes = {"a": batch_a.shape, "b": batch_b.shape,
              "c": "3 passes repacked in the step", "c*": " + ".join(str(b.shape) for b in three)}
    examples = {key: n for key in variants}
    m = min(args.padded_examples, n)
    if m > 0:
        padded, pd_idx, td_idx = build_three_passes(ex_views[:m], k, pred, pad_id, args.pad_len, padded=True)
        variants["d"] = lambda: three_pass_step(model, padded, pd_idx, td_idx)
        shapes["d"] = " + ".join(str(b.shape) for b in padded)
        examples["d"] = m
        # the single-pass loss of the same m examples, to check (d) computes the same thing
        with torch.no_grad():
            ref_d = float(forward(model, pack([Example("pair", v) for v in ex_views[:m]], s, **kw)).loss)
    with torch.no_grad():
        lm_b = float(forward(model, batch_b).lm_loss)
    times, losses = time_steps(model, variants, args.reps, args.warmup)
    stats = {key: spread(v, quartiles="exclusive") for key, v in times.items()}
    med = {key: v["median"] for key, v in stats.items()}

    def paired(x, y):  # median over repetitions of the per-repetition ratio x / y
        return paired_ratio(times[x], times[y])

    check = {"a": abs(losses["a"] - lm_b), "b": 0.0, "c": abs(losses["c"] - losses["b"]),
             "c*": abs(losses["c*"] - losses["b"])}
    if "d" in variants:
        check["d"] = abs(losses["d"] - ref_d)
    labels = {"a": NAMES["a"], "b": NAMES["b"], "c": "(c) three passes, objective.py three_pass (full cost)",
              "c*": "(c*) three passes, pre-packed (compute only)", "d": NAMES["d"] + f" to {args.pad_len}"}
    rows = []
    for key in variants:
        per_ex = med[key] / examples[key] * 1e3
        rows.append([labels[key], examples[key], shapes[key], f"{med[key] * 1e3:.1f}",
                     f"{stats[key]['q1'] * 1e3:.1f}-{stats[key]['q3'] * 1e3:.1f}", f"{per_ex:.3f}",
                     f"{per_ex / (med['b'] / n * 1e3):.2f}x", f"{check[key]:.1e}"])
    header = ["variant", "examples", "rows x seq_len", "median ms / step", "IQR ms", "ms / example",
              "vs (b) per example", "\\|loss diff\\|"]
    ratios = [["(b) / (a)", f"{med['b'] / med['a']:.2f}", f"{paired('b', 'a'):.2f}"],
              ["(c) / (b)", f"{med['c'] / med['b']:.2f}", f"{paired('c', 'b'):.2f}"],
              ["(c*) / (b)", f"{med['c*'] / med['b']:.2f}", f"{paired('c*', 'b'):.2f}"]]
    if "d" in variants:
        ratios.append([f"(d) / (b), per example ({m} vs {n} examples)",
                       f"{(med['d'] / m) / (med['b'] / n):.2f}", "n/a (different batches)"])
    text = [f"Tiny preset ({sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tok)}), "
            f"fp32, sdpa with the dense boolean mask, torch.set_num_threads({args.threads}); "
            f"forward + backward per step; {args.warmup} warm-up + {args.reps} timed repetitions, "
            f"interleaved {' '.join(variants)}. Rows of {s} tokens; {n} examples fill {batch_b.shape[0]} rows of (b).",
            "",
            markdown_table(header, rows),
            "",
            markdown_table(["ratio", "of medians", "median of per-repetition ratios"], ratios),
            "",
            "\\|loss diff\\|: against (b)'s loss on the same examples ((a): against (b)'s next-token loss); "
            "all variants compute the same objective."]
    return "\n".join(text), dict(median=med, losses=losses)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    tok, tok_desc, pred, views = load_views(args)
    if len(pred) < args.k:
        raise SystemExit(f"error: the tokenizer has {len(pred)} predictor tokens, k={args.k}")
    counts, _ = counts_section(args, views)
    parts = [f"Data: {args.data_desc}; tokenizer: {tok_desc}; torch {torch.__version__}; "
             f"{device_name('cpu')}; "
             f"{datetime.date.today().isoformat()}.",
             "", "Tokens and rows per epoch:", "", counts]
    print("\n".join(parts), flush=True)
    if not args.skip_timing:
        timing, _ = timing_section(args, tok, pred, views)
        parts += ["", "Step time (CPU):", "", timing]
        print("\n" + "Step time (CPU):\n\n" + timing, flush=True)
    finish(parts, t0, args.out)


if __name__ == "__main__":
    main()
