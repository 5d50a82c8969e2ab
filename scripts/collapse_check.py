#!/usr/bin/env python
"""Collapse check of the JEPA read-outs of exported models: paired vs unrelated cosines.

For N (text, code) pairs of a chat JSONL, each pair is laid out exactly as training lays it
out (``megajepa.layout.pack``: ``text code <pred_1..k>`` in one document, ``code`` alone in
the next) and run through ``megajepa.objective.hidden_states`` (the trainer's packed
forward and attention mask). The JEPA read-outs are the rows the loss uses:

    Pred(Enc(Text)) = final-norm hidden state at <pred_k> (at the text's last token if k=0)
    Enc(Code)       = final-norm hidden state at </s> of the code view run alone

Reported per model (cosines on L2-normalized read-outs):

* ``paired_cos``     mean cos(Pred_i, Code_i)                  (what the JEPA loss pushes up)
* ``shuffled_cos``   mean cos(Pred_i, Code_pi(i)), pi a random derangement (unrelated pairs)
* ``code_code_cos``  mean cos(Code_i, Code_j) over all i != j
* ``pred_pred_cos``  mean cos(Pred_i, Pred_j) over all i != j
* ``top1``           fraction of i whose nearest code (by cosine, among all N) has the same
                     code string as pair i (chance is about 1/N); the in-batch retrieval
                     task an InfoNCE loss trains
* ``eff_rank_code``, ``eff_rank_pred``  effective rank (exp of the entropy of the normalized
                     singular values) of the normalized read-outs: 1 for a collapse to one
                     vector, up to D for spread-out embeddings

A model collapsed onto one vector has paired = shuffled = code_code = pred_pred ~ 1 and
``top1`` at chance. ``k`` is read from the run's ``config.yaml`` (the export's parent
folder) when present; a next-token baseline (k=0) is read with ``--baseline-k`` predictor
tokens so that its numbers are comparable (its ``<pred>`` embeddings are untrained).

Example::

    python scripts/collapse_check.py --data /work/shared/data/nlrx_synth_test.jsonl \\
        --limit 500 baseline=/tmp/res/sweep/baseline/seed0/export \\
        "jepa k3=/tmp/res/sweep/k3_lbd2/seed0/export"

Prints one JSON line per model (and appends them to ``--out`` if given).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _run_k(export_dir: Path):
    """``jepa.k`` from the training run's config.yaml next to the export, else None."""
    cfg = export_dir.parent / "config.yaml"
    if not cfg.is_file():
        return None, None
    import yaml

    c = yaml.safe_load(cfg.read_text()) or {}
    j = c.get("jepa", {}) or {}
    return j.get("k"), j


def readouts(model, tokenizer, records, *, k: int, seq_len: int = 256, template: str = "plain",
             rows_per_forward: int = 16):
    """``(pred [N, D], code [N, D])`` JEPA read-outs of ``records`` in input order."""
    import torch

    from data_tools.templates import pair_views
    from data_tools.tokenizer import pred_ids as tok_pred_ids
    from megajepa.eval.run import as_record
    from megajepa.layout import Example, example_cost, pack, plan_rows
    from megajepa.objective import hidden_states

    pids = tok_pred_ids(tokenizer)
    if len(pids) < k:
        raise SystemExit(f"error: the tokenizer has {len(pids)} <pred_i> tokens, k={k} needed")
    examples = []
    for r in map(as_record, records):
        t, c = pair_views(tokenizer, r["user"], r["assistant"], system=r.get("system"),
                          template=template)
        examples.append(Example("pair", [t, c]))
    costs = [example_cost(ex, k=k) for ex in examples]
    too_long = [i for i, c in enumerate(costs) if c > seq_len]
    if too_long:
        raise SystemExit(f"error: {len(too_long)} pairs longer than --seq-len {seq_len} "
                         f"(first: record {too_long[0]}, {costs[too_long[0]]} tokens)")
    rows = plan_rows(costs, seq_len)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pred_out, code_out, order = [], [], []
    with torch.no_grad():
        for start in range(0, len(rows), rows_per_forward):
            chunk = rows[start:start + rows_per_forward]
            ids = [i for members in chunk for i in members]
            local = [[ids.index(i) for i in members] for members in chunk]
            batch = pack([examples[i] for i in ids], seq_len, k=k, pred_ids=pids, pad_id=pad,
                         rows=local).to(device)
            h = hidden_states(model, batch.input_ids, batch.position_ids, batch.doc_ids,
                              batch.roles)
            flat = h.reshape(-1, h.shape[-1]).float()
            pred_out.append(flat.index_select(0, batch.pred_index).cpu().numpy())
            code_out.append(flat.index_select(0, batch.target_index).cpu().numpy())
            order += ids  # pairs are emitted row by row, member by member
    pred, code = np.concatenate(pred_out), np.concatenate(code_out)
    inv = np.empty(len(order), dtype=np.int64)
    inv[np.asarray(order)] = np.arange(len(order))
    return pred[inv].astype(np.float64), code[inv].astype(np.float64)


def _offdiag_mean(x: np.ndarray) -> float:
    g = x @ x.T
    n = len(x)
    return float((g.sum() - np.trace(g)) / (n * (n - 1)))


def _eff_rank(x: np.ndarray) -> float:
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def collapse_stats(pred: np.ndarray, code: np.ndarray, codes_text, *, seed: int = 0) -> dict:
    """The numbers of the module docstring for read-outs ``[N, D]``."""
    n = len(pred)
    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    p, c = norm(pred), norm(code)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)      # a derangement: i -> the next index of a random cycle
    sim = p @ c.T
    nearest = sim.argmax(1)
    same = np.asarray([codes_text[i] == codes_text[j] for i, j in enumerate(nearest)])
    shuffled_same = np.asarray([codes_text[i] == codes_text[perm[i]] for i in range(n)])
    return dict(n=n, dim=int(pred.shape[1]),
                paired_cos=float((p * c).sum(1).mean()),
                shuffled_cos=float((p * c[perm]).sum(1).mean()),
                code_code_cos=_offdiag_mean(c), pred_pred_cos=_offdiag_mean(p),
                top1=float(same.mean()), top1_chance=float(1.0 / n),
                shuffled_same_code=int(shuffled_same.sum()),
                eff_rank_code=_eff_rank(c), eff_rank_pred=_eff_rank(p))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/collapse_check.py",
                                description=__doc__.split("\n\n")[0],
                                epilog="Read the module docstring for the definitions.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", metavar="[LABEL=]MODEL_DIR",
                   help="exported Hugging Face model folders (a run's export/), optionally labelled")
    p.add_argument("--data", required=True, help="chat-messages JSONL of (text, code) pairs")
    p.add_argument("--limit", type=int, default=500, help="first N records")
    p.add_argument("--k", type=int, default=None,
                   help="predictor tokens (default: jepa.k of the run's config.yaml)")
    p.add_argument("--baseline-k", type=int, default=3,
                   help="predictor tokens used to read a model trained with k=0 (or no config)")
    p.add_argument("--seq-len", type=int, default=256, help="packed row length")
    p.add_argument("--template", choices=("plain", "chat"), default="plain")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled pairing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    return p


def main(argv=None) -> list:
    from megajepa.eval.run import as_record, load_model, read_records

    args = build_parser().parse_args(argv)
    if not Path(args.data).is_file():
        raise SystemExit(f"error: no such data file: {args.data}")
    records = read_records(args.data, args.limit)
    if len(records) < 2:
        raise SystemExit("error: need at least 2 records")
    codes_text = [as_record(r)["assistant"] for r in records]
    results = []
    for spec in args.models:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise SystemExit(f"error: not an exported model folder (no config.json): {folder}")
        run_k, jcfg = _run_k(folder)
        if jcfg is not None and not (run_k and jcfg.get("lbd")):
            jcfg = {"distance": None, "stopgrad_target": None}  # next-token only: no JEPA term
        k = args.k if args.k is not None else (run_k if run_k else args.baseline_k)
        start = time.time()
        model, tokenizer = load_model(folder, device=args.device, dtype="float32")
        pred, code = readouts(model, tokenizer, records, k=k, seq_len=args.seq_len,
                              template=args.template)
        res = dict(model=label or str(folder), path=str(folder), k=k,
                   distance=(jcfg or {}).get("distance"),
                   stopgrad_target=(jcfg or {}).get("stopgrad_target"),
                   **{key: (round(v, 4) if isinstance(v, float) else v)
                      for key, v in collapse_stats(pred, code, codes_text, seed=args.seed).items()},
                   seconds=round(time.time() - start, 1))
        line = json.dumps(res, ensure_ascii=False)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        results.append(res)
    return results


if __name__ == "__main__":
    from data_tools.errors import run_cli
    sys.exit(run_cli(main))
