"""Training-step throughput of the objective: tokens/s, MFU and peak memory per model size,
and the step-time ratios of DESIGN.md section 8, measured side by side in one run.

For each preset, on the same packed data (pair examples with text/code lengths drawn from
ranges typical of instruction data), one optimizer step (forward + backward + AdamW) of:

    lm      next-token only, packed (Example.jepa = False)
    single  LLM-JEPA, our single pass over packed rows (the default)
    three   LLM-JEPA, the paper's three forwards (each packed)

Variants are interleaved (lm, single, three, lm, ...) after a warm-up, and the median over
repetitions is reported. ``--options`` repeats everything per speed setting of
``megajepa.model.optimize`` (a fresh model each): ``off`` (eager), ``layers`` / ``model``
(torch.compile), ``liger`` (liger-kernel's RMSNorm, RoPE, SwiGLU, eager), ``ckpt`` (activation
checkpointing), combined with ``+`` (``layers+ckpt``). MFU counts useful FLOPs only (megajepa.metrics.FlopCounter: real
tokens, labelled positions, attended (q, kv) pairs) against the device's dense bf16 peak.

GPU:  python scripts/bench/throughput.py --presets 125m,llama-3.2-1b --out runs/throughput.md
      python scripts/bench/throughput.py --presets llama-3.2-1b --variants lm,single \
          --options off,liger,layers,model --out runs/speed.md
CPU:  python scripts/bench/throughput.py --presets tiny --seq-len 512 --rows 2 --reps 3 --out /tmp/t.md
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import (command_line, device_name, interleaved, longest_prefix,  # noqa: E402
                           markdown_table, median_time, random_pairs, sync_for, write_report)
from megajepa import Example, forward, pack  # noqa: E402
from megajepa.layout import example_cost  # noqa: E402
from megajepa.metrics import FlopCounter, attended_pairs, device_peak_tflops  # noqa: E402
from megajepa.model import build_model  # noqa: E402


def fill_rows(examples, seq_len, rows, k, pred_ids):
    """The longest prefix of ``examples`` whose single-pass packing fits in ``rows`` rows."""
    n = longest_prefix(len(examples), lambda m: pack(examples[:m], seq_len, k=k, pred_ids=pred_ids,
                                                      pad_id=0).stats["rows"], rows)
    return examples[:n]


def speed_options(text: str):
    """``layers+ckpt`` -> the ``model`` config section that optimize() reads."""
    from types import SimpleNamespace

    parts = set(text.split("+"))
    unknown = parts - {"off", "layers", "model", "liger", "ckpt"}
    if unknown or len(parts & {"off", "layers", "model"}) > 1:
        raise ValueError(f"--options {text!r}: off|layers|model, liger, ckpt joined by +")
    compile_mode = next(iter(parts & {"layers", "model"}), "off")
    return SimpleNamespace(compile=compile_mode, liger="on" if "liger" in parts else "off",
                           checkpointing="ckpt" in parts)


@contextlib.contextmanager
def llama_globals_restored():
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)


def bench_preset(preset, a, device, dtype, options="off"):
    from megajepa.model import optimize

    vocab = a.vocab
    pred_ids = list(range(2, 2 + a.k))
    model = build_model(preset=preset, vocab_size=vocab, seed=0, dtype=dtype,
                        attn_implementation=a.attn).to(device)
    opts = speed_options(options)
    opts.checkpointing = opts.checkpointing or a.checkpointing
    optimize(model, opts, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    pool = [e for e in random_pairs(4 * a.rows * a.seq_len // 64, vocab, 0, a.text_len, a.code_len)
            if example_cost(e, k=a.k) <= a.seq_len]
    exs = fill_rows(pool, a.seq_len, a.rows, a.k, pred_ids)
    plain = [Example(e.kind, e.views, jepa=False) for e in exs]
    kw = dict(k=a.k, pred_ids=pred_ids, pad_id=0)
    batches = {"lm": pack(plain, a.seq_len, **kw, min_rows=a.rows).to(device),
               "single": pack(exs, a.seq_len, **kw, min_rows=a.rows).to(device)}
    batches["three"] = batches["single"]
    flops = FlopCounter(model.config)
    peak = device_peak_tflops(a.peak_tflops)
    sync = sync_for(device)
    mem = {}

    def step(v):
        b = batches[v]
        out = forward(model, b, lbd=0.0 if v == "lm" else 1.0,
                      mode="three_pass" if v == "three" else "single_pass")
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for v in a.variants:  # warm-up (compiles FlexAttention / Triton kernels)
        for _ in range(a.warmup):
            step(v)
    for v in a.variants:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        step(v)
        sync()
        mem[v] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    times, _ = interleaved({v: functools.partial(step, v) for v in a.variants}, a.reps, sync=sync)
    b = batches["single"]
    mask_ms = float("nan")
    if a.attn == "flex_attention":
        from megajepa.masking import block_mask
        mask_ms = 1000 * median_time(lambda: block_mask(b.doc_ids, b.roles), 4, sync=sync)
    real = int((b.doc_ids >= 0).sum())
    lm_real = int((batches["lm"].doc_ids >= 0).sum())
    labels = b.num_label_tokens
    rows = []
    for v in a.variants:
        t = statistics.median(times[v])
        bb = batches["lm"] if v == "lm" else b
        useful = flops.step_flops(lm_real if v == "lm" else real, labels,
                                  attended_pairs(bb.doc_ids, bb.roles))
        rows.append(dict(preset=preset, options=options, variant=v, step_ms=1000 * t,
                         tokens_per_s=(lm_real if v == "lm" else real) / t,
                         examples=len(exs), tflops=useful / t / 1e12,
                         mfu=(useful / t / 1e12 / peak) if peak else float("nan"),
                         peak_gb=mem[v]))
    med = {v: statistics.median(times[v]) for v in a.variants}
    ratios = {}
    if "single" in med and "lm" in med:
        ratios["single/lm"] = med["single"] / med["lm"]
    if "three" in med and "single" in med:
        ratios["three/single"] = med["three"] / med["single"]
    del model, opt
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows, ratios, dict(options=options, examples=len(exs), real_tokens=real, lm_tokens=lm_real,
                              capacity=a.rows * a.seq_len, block_mask_ms=mask_ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", default="125m,llama-3.2-1b")
    p.add_argument("--variants", default="lm,single,three")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rows", type=int, default=4, help="packed rows per step")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--text-len", default="40,400", help="min,max tokens of the text view")
    p.add_argument("--code-len", default="20,200", help="min,max tokens of the code view")
    p.add_argument("--attn", default=None, help="attention backend (default: flex_attention on "
                   "CUDA, sdpa on CPU)")
    p.add_argument("--dtype", default=None, help="bf16 (CUDA default) or fp32 (CPU default)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--options", default="off", help="speed settings to compare, comma-separated "
                   "(off, layers, model, liger, ckpt; combine with +)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--out", default=None, help="Markdown file to write (JSON beside it)")
    a = p.parse_args(argv)
    a.variants = a.variants.split(",")
    a.options = a.options.split(",")
    for o in a.options:
        speed_options(o)  # bad settings fail before any work
    a.text_len = tuple(int(x) for x in a.text_len.split(","))
    a.code_len = tuple(int(x) for x in a.code_len.split(","))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    a.attn = a.attn or ("flex_attention" if cuda else "sdpa")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype or ("bf16" if cuda else "fp32")]
    head = ["preset", "options", "variant", "step ms", "tokens/s", "TFLOP/s", "MFU", "peak GiB"]
    results, steps = [], []
    for preset in a.presets.split(","):
        for options in a.options:
            with llama_globals_restored():  # liger patches Llama's module classes globally
                rows, ratios, info = bench_preset(preset, a, device, dtype, options)
            results.append(dict(preset=preset, options=options, rows=rows, ratios=ratios, info=info))
            steps += [[preset, options, r["variant"], f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:.0f}",
                       f"{r['tflops']:.1f}", f"{r['mfu']:.3f}", f"{r['peak_gb']:.2f}"] for r in rows]
            print(markdown_table(head, steps[-len(rows):]), flush=True)
    shares = [[r["preset"], r["options"], r["info"]["examples"], r["info"]["real_tokens"], r["info"]["lm_tokens"],
               r["info"]["capacity"], f"{r['ratios'].get('single/lm', float('nan')):.3f}",
               f"{r['ratios'].get('three/single', float('nan')):.3f}", f"{r['info']['block_mask_ms']:.2f}"]
              for r in results]
    text = "\n".join([
        f"device: {device_name(device)}; torch {torch.__version__}; {datetime.date.today()}; "
        f"dtype {dtype}; attn {a.attn}; seq_len {a.seq_len} x {a.rows} rows; k {a.k}; "
        f"vocab {a.vocab}; peak {device_peak_tflops(a.peak_tflops) or 'n/a'} TFLOP/s",
        f"command: {command_line(__file__, argv)}", "", markdown_table(head, steps), "",
        markdown_table(["preset", "options", "examples/step", "single-pass tokens", "LM-only tokens", "capacity",
                        "single/lm step time", "three/single step time", "BlockMask build ms"], shares)])
    print(text)
    if a.out:
        write_report(a.out, text, results)


if __name__ == "__main__":
    main()
