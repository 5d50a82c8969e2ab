"""Benchmark STP against next-token training on the same packed rows (CPU).

STP adds no tokens: both variants run the same rows (examples packed without JEPA segments).
Per model preset, one step is forward + backward, timed side by side in one run, interleaved
(nt stp1 stp4 stp1+P, nt stp1 ...) after warm-up:

    nt      forward(model, batch)                                    next-token loss only
    stpN    stp.attach(batch, N spans per document) + forward(..., objective="stp")
    stp1+P  the same with N = 1 and the linear predictor

The STP steps include drawing the spans (numpy, on the CPU, as the loader would). Reported:
median ms per step, and the median over repetitions of the per-repetition ratio STP / nt
(robust to the drift of a shared machine). Because a whole step is noisy on a shared CPU, the
STP work is also timed alone, interleaved the same way: drawing the spans + the STP loss
forward and backward on the hidden states of one (untimed) forward; ``1 + alone / nt`` is then
a low-noise estimate of the ratio (it leaves out only adding the STP gradient into the LM's
``d_hidden``, one [tokens, hidden] add). On CPU the STP loss runs the eager PyTorch path (the
Triton kernels run on CUDA).

On a GPU (``--device cuda``; bf16 by default there, ``--dtype``): the model and the loss run on
the device, the spans are drawn on the host and copied with the batch (as the trainer does),
and every timing is closed by ``torch.cuda.synchronize()``; the STP loss runs the fused Triton
kernels. The 125m ratio of issue 11::

    python scripts/bench/stp.py --presets 125m --device cuda --reps 20

Data: a chat-messages JSONL (pairs, as NL-RX-SYNTH) or any file data_tools reads, or, with no
``--data``, pairs from the embedded NL-RX generator; a SentencePiece tokenizer is trained on it
in a temporary directory.

    python scripts/bench/stp.py --presets tiny,small --reps 20
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import (device_name, finish, interleaved, longest_prefix,  # noqa: E402
                           markdown_table, paired_ratio, spread, sync_for)
from megajepa import stp  # noqa: E402
from megajepa.layout import Example, pack, plan_rows  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Variants and timing rules: see the module docstring.")
    p.add_argument("--data", default=None,
                   help="input file (chat JSONL of pairs, groups or text); default: the embedded NL-RX generator")
    p.add_argument("--examples", type=int, default=4000,
                   help="examples generated (no --data) or read at most (default 4000)")
    p.add_argument("--vocab-size", type=int, default=1000, help="SentencePiece vocabulary (default 1000)")
    p.add_argument("--presets", default="tiny,small", help="comma list of model presets (default tiny,small)")
    p.add_argument("--seq-len", type=int, default=1024, help="row length in tokens (default 1024)")
    p.add_argument("--rows", type=int, default=4, help="rows per step (default 4)")
    p.add_argument("--spans", default="1,4", help="comma list of spans per document, one variant each (default 1,4)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per variant (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: steady on a shared CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="model dtype (default auto: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--seed", type=int, default=0, help="model init and span seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    try:
        args.presets = [x for x in args.presets.split(",") if x]
        args.spans = [int(x) for x in args.spans.split(",") if x]
        for n in args.spans:
            stp.StpSpec(spans=n)
    except ValueError as e:
        p.error(str(e))
    for name in ("seq_len", "rows", "reps", "examples", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    return args


def load_examples(args):
    """Tokenized examples (packed without JEPA segments) and a description of the data."""
    from data_tools.nlrx import chat_record, generate_pairs
    from data_tools.preprocess import encode_records
    from data_tools.readers import read_records
    from data_tools.tokenizer import train_sentencepiece

    tmp = tempfile.mkdtemp(prefix="bench_stp_")
    source = args.data
    if source is None:
        source = os.path.join(tmp, "nlrx.jsonl")
        with open(source, "w") as f:
            for r in generate_pairs(args.examples, seed=args.seed):
                f.write(json.dumps(chat_record(r["description"], r["regex"])) + "\n")
    records = []
    for r in read_records(source):
        records.append(r)
        if len(records) >= args.examples:
            break
    texts = []
    for r in records:
        texts += [r.data["user"], r.data["assistant"]] if r.kind == "pair" else (
            list(r.data) if r.kind == "group" else [r.data])
    tok = train_sentencepiece(texts, os.path.join(tmp, "tok"), vocab_size=args.vocab_size, k=1)
    views = encode_records(tok, records)
    bad = [v for v in views if isinstance(v, Exception)]
    if bad:
        raise SystemExit(f"error: {bad[0]}")
    examples = [Example(r.kind, v, jepa=False) for r, v in zip(records, views)]
    desc = args.data or f"{args.examples} embedded NL-RX pairs (seed {args.seed})"
    return tok, examples, desc


def fill_rows(examples, seq_len, rows, pad_id):
    """The first examples that fill ``rows`` rows, packed for next-token training."""
    costs = [e.num_tokens for e in examples]  # no JEPA segments: a view costs its tokens
    n = longest_prefix(len(examples), lambda m: len(plan_rows(costs[:m], seq_len)), rows)
    return pack(examples[:n], seq_len, k=0, pred_ids=[], pad_id=pad_id), n


def time_variants(model, variants, reps, warmup, device="cpu"):
    """Interleaved forward+backward timings: {name: [seconds]} and the last loss of each."""
    def fwd_bwd(fn):
        def step():
            out = fn()
            out.loss.backward()
            return out
        return step

    times, outs = interleaved({name: fwd_bwd(fn) for name, fn in variants.items()}, reps, warmup,
                              sync=sync_for(device), before=lambda: model.zero_grad(set_to_none=True),
                              progress=True)
    losses = {name: (float(out.lm_loss.detach()), float(out.jepa_loss.detach()), out.num_pairs)
              for name, out in outs.items()}
    return times, losses


def time_alone(model, batch, args, predictor):
    """{variant: [seconds]} of the STP work alone: spans + loss forward + backward."""
    from megajepa.objective import hidden_states, stp_loss_sum

    dev = dataclasses.replace(batch, stp=None).to(args.device)
    with torch.no_grad():
        hidden = hidden_states(model, dev.input_ids, dev.position_ids, dev.doc_ids, dev.roles)
    flat = hidden.reshape(-1, hidden.shape[-1])
    leaf = {}  # a fresh leaf of the hidden states per call, made outside the timed window

    def work(n, pred):
        def step():
            h = leaf["h"]
            stp.attach(batch, stp.StpSpec(spans=n), seed=args.seed)
            loss, _ = stp_loss_sum(h, batch.stp.to(h.device), predictor=pred)
            loss.backward()
        return step

    variants = {f"stp{n}": work(n, None) for n in args.spans}
    variants["stp1+P"] = work(1, predictor)
    return interleaved(variants, args.reps, args.warmup, sync=sync_for(args.device),
                       before=lambda: leaf.update(h=flat.detach().requires_grad_()))[0]


def bench_preset(args, preset, tok, examples):
    from megajepa.model import build_model
    from megajepa.objective import forward

    batch, n_ex = fill_rows(examples, args.seq_len, args.rows, tok.pad_token_id)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = build_model(preset=preset, vocab_size=len(tok), seed=args.seed, dtype=dtype,
                        device=args.device)
    model.train()
    dim = model.config.hidden_size
    torch.manual_seed(args.seed)
    predictor = stp.make_predictor(dim, dtype=dtype).to(args.device)
    nt_batch = dataclasses.replace(batch, stp=None)  # copied to the device without spans

    def stp_step(n, pred=None):
        def step():
            stp.attach(batch, stp.StpSpec(spans=n, predictor=pred is not None), seed=args.seed)
            return forward(model, batch, objective="stp", stp_predictor=pred)
        return step

    variants = {"nt": lambda: forward(model, nt_batch)}
    for n in args.spans:
        variants[f"stp{n}"] = stp_step(n)
    variants["stp1+P"] = stp_step(1, predictor)
    times, losses = time_variants(model, variants, args.reps, args.warmup, args.device)
    alone = time_alone(model, batch, args, predictor)
    s = {k: spread(v, quartiles="exclusive") for k, v in times.items()}
    rows = []
    for k in variants:
        ratio = paired_ratio(times[k], times["nt"])
        lm, jl, spans = losses[k]
        a = spread(alone[k])["median"] if k in alone else 0.0
        rows.append([k, f"{spans if k != 'nt' else 0:,}", f"{s[k]['median'] * 1e3:.1f}",
                     f"{s[k]['q1'] * 1e3:.1f}-{s[k]['q3'] * 1e3:.1f}", f"{ratio:.3f}",
                     f"{a * 1e3:.2f}", f"{1 + a / s['nt']['median']:.4f}", f"{abs(lm - losses['nt'][0]):.1e}"])
    params = sum(p.numel() for p in model.parameters())
    sp = batch.stp.stats
    head = (f"**{preset}** (hidden {dim}, {params:,} parameters): {n_ex} examples in rows "
            f"{tuple(batch.shape)}, {sp['documents']} documents ({sp['skipped_short']} too short for a span).")
    return head, rows


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok, examples, desc = load_examples(args)
    where = device_name(args.device) + ("" if args.device == "cuda" else f", {args.threads} thread(s)")
    parts = [f"Data: {desc}; torch {torch.__version__}; {where}; {datetime.date.today().isoformat()}. "
             f"{args.dtype}, sdpa (dense boolean mask), forward + backward per step, {args.warmup} warm-up + "
             f"{args.reps} timed repetitions, interleaved."]
    header = ["variant", "spans", "median ms / step", "IQR ms", "STP / nt (median of per-rep ratios)",
              "STP work alone, ms", "1 + alone / nt", "\\|LM loss - nt's\\|"]
    for preset in args.presets:
        head, rows = bench_preset(args, preset, tok, examples)
        parts += ["", head, "", markdown_table(header, rows)]
        print("\n".join(parts[-3:]), flush=True)
    finish(parts, t0, args.out)


if __name__ == "__main__":
    main()
