"""Representation diagnostics of the LLM-JEPA paper's appendix.

For N (text, code) pairs, each view is run through the model *alone* and read at its last
token (the view's end token), after the final norm (what the LM head reads)::

    Enc(Text): [N, D]   <s> user <sep>           -> hidden state at <sep>
    Enc(Code): [N, D]   assistant </s>           -> hidden state at </s>

Diagnostics (float64):

* ``lstsq_residual``: ``min_X ||Enc(Text) X - Enc(Code)||_F``, the Frobenius norm of the
  least-squares residual (``numpy.linalg.lstsq``). The same ``X`` also minimizes the
  spectral norm (the residual is orthogonal to the column space of Enc(Text)), reported as
  ``lstsq_residual_spectral``; ``lstsq_residual_relative`` divides by ``||Enc(Code)||_F``.
  Only meaningful when N > D (with N <= D an exact map generically exists).
* ``singular_values``: the top-k singular values of ``Enc(Text) - Enc(Code)``; a JEPA model
  concentrates them (the paper's Figure 5).
* ``cosine_mean``: mean cosine between paired embeddings.
* a t-SNE picture of both clouds (``tsne.png``).

``python -m megajepa.analyze --model <hf_dir> --data <jsonl> --out <dir>`` writes
``diagnostics.json``, ``singular_values.png`` and ``tsne.png``; ``log_diagnostics`` sends
the same to TensorBoard from the trainer's periodic hook.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data_tools.errors import run_cli
from data_tools.records import as_record, read_records
from data_tools.templates import pair_views
from megajepa.cli import HelpFormatter, add_template_args, must_exist, output_dir, positive_int
from megajepa.collapse import (diagnostics, log_diagnostics, plot_singular_values, plot_tsne,  # noqa: F401
                               tsne_points)
from megajepa.eval.run import load_model

__all__ = ["last_token_states", "encode_pairs", "diagnostics", "tsne_points",
           "plot_singular_values", "plot_tsne", "log_diagnostics", "analyze", "main"]


# ------------------------------------------------------------------ embeddings
def _base_model(model):
    """The decoder stack without the LM head (``LlamaForCausalLM.model``)."""
    base = getattr(model, "model", None)
    if base is None and hasattr(model, "get_decoder"):
        base = model.get_decoder()
    return base if base is not None else model


def last_token_states(model, seqs: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
    """Final-norm hidden state at the last token of each sequence, run alone: ``[N, D]``.

    Sequences are right-padded into batches; with causal attention the real tokens never
    see the padding, and each row is read at its own last real position.
    """
    if any(len(s) == 0 for s in seqs):
        raise ValueError("empty sequence")
    base = _base_model(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start:start + batch_size]
                width = max(len(s) for s in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, s in enumerate(chunk):
                    ids[row, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
                    mask[row, :len(s)] = 1
                hidden = base(input_ids=ids.to(device),
                              attention_mask=mask.to(device)).last_hidden_state
                last = torch.as_tensor([len(s) - 1 for s in chunk], device=device)
                rows = hidden[torch.arange(len(chunk), device=device), last]
                out.append(rows.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def encode_pairs(model, tokenizer, records, *, template: str = "plain", batch_size: int = 32,
                 system_in_plain: bool = False):
    """``(Enc(Text), Enc(Code))`` for chat records, views from ``data_tools.templates``."""
    texts, codes = [], []
    for r in map(as_record, records):
        t, c = pair_views(tokenizer, r["user"], r["assistant"], system=r.get("system"),
                          template=template, system_in_plain=system_in_plain)
        texts.append(t)
        codes.append(c)
    return (last_token_states(model, texts, batch_size),
            last_token_states(model, codes, batch_size))


# ------------------------------------------------------------------------- CLI
def analyze(text: np.ndarray, code: np.ndarray, out, *, top_k: int = 100, tsne: bool = True,
            seed: int = 0) -> dict:
    """Diagnostics + PNGs + ``diagnostics.json`` in folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    diag = diagnostics(text, code, top_k)
    plot_singular_values(diag["singular_values"], str(out / "singular_values.png"))
    if tsne:
        plot_tsne(tsne_points(text, code, seed), str(out / "tsne.png"))
    (out / "diagnostics.json").write_text(json.dumps(diag, indent=2) + "\n")
    return diag


DESCRIPTION = """\
Representation diagnostics of the LLM-JEPA paper's appendix for (text, code)
pairs: each view is run alone and read at its last token, after the final norm.
Writes, in --out:
  diagnostics.json     least-squares residual min_X ||Enc(Text) X - Enc(Code)||
                       (Frobenius, spectral, relative), top singular values of
                       Enc(Text) - Enc(Code), mean paired cosine
  singular_values.png  those singular values, log scale
  tsne.png             t-SNE of both clouds (not with --no-tsne)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megajepa.analyze", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder (e.g. a run's export/), or a run / "
                        "checkpoint directory (exported on the fly)")
    p.add_argument("--data", required=True, help="chat-messages JSONL of (text, code) pairs")
    p.add_argument("--out", required=True,
                   help="output folder for diagnostics.json, singular_values.png, tsne.png")
    add_template_args(p, "view layout")
    p.add_argument("--limit", type=positive_int, default=1000,
                   help="first N records (t-SNE is O(N^2))")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="sequences per forward pass")
    p.add_argument("--top-k", type=positive_int, default=100,
                   help="singular values kept in diagnostics.json and the plot")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE picture (tsne.png)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    p.add_argument("--device", default=None, help="cuda or cpu; default: cuda if available")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    must_exist(args.data, "--data", kind="file")
    must_exist(args.model, "--model")
    output_dir(args.out)
    records = read_records(args.data, args.limit)
    start = time.time()
    model, tokenizer = load_model(args.model, device=args.device, dtype="float32")
    text, code = encode_pairs(model, tokenizer, records, template=args.template,
                              batch_size=args.batch_size, system_in_plain=args.system_in_plain)
    diag = analyze(text, code, args.out, top_k=args.top_k, tsne=not args.no_tsne,
                   seed=args.seed)
    print(f"analyze n={diag['n']} dim={diag['dim']} lstsq_residual={diag['lstsq_residual']:.4g} "
          f"(relative {diag['lstsq_residual_relative']:.4g}) top_sv={diag['singular_values'][0]:.4g} "
          f"cos={diag['cosine_mean']:.4f} ({time.time() - start:.1f}s) -> {args.out}")
    return diag


if __name__ == "__main__":
    sys.exit(run_cli(main))
