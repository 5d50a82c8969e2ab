#!/usr/bin/env python
"""Collapse check of the JEPA read-outs of exported models: paired vs unrelated cosines.

For N (text, code) pairs of a chat JSONL, each pair is laid out exactly as training lays it
out (``megajepa.collapse.jepa_readouts``: ``megajepa.layout.pack`` with the run's ``k`` and
``read_at``, ``text code <pred_1..k>`` in one document, ``code`` alone in the next) and run
through the trainer's packed forward and attention mask. The JEPA read-outs are the rows the
loss uses:

    Pred(Enc(Text)) = final-norm hidden state at <pred_k> (at the text's last token if k=0)
    Enc(Code)       = final-norm hidden state at </s> of the code view run alone
                      (read_at=last: at the code's last content token, the one before </s>;
                      the text's read-out is then also before its end token when k=0)

Reported per model (cosines on L2-normalized read-outs; the numbers other than ``top1`` are
``megajepa.collapse.collapse_metrics``, which the training process logs every eval_every):

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
``top1`` at chance. ``k`` and ``read_at`` are read from the run's ``config.yaml`` (the
export's parent folder) when present; a next-token baseline (k=0) is read with
``--baseline-k`` predictor tokens so that its numbers are comparable (its ``<pred>``
embeddings are untrained).

Example::

    python scripts/collapse_check.py --data path/to/nlrx_synth_test.jsonl \\
        --limit 500 baseline=runs/res/sweep/baseline/seed0/export \\
        "jepa k3=runs/res/sweep/k3_lbd2/seed0/export"

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
             rows_per_forward: int = 16, read_at: str = "end"):
    """``(pred [N, D], code [N, D])`` JEPA read-outs of ``records`` in input order."""
    from data_tools.templates import pair_views
    from data_tools.tokenizer import pred_ids as tok_pred_ids
    from megajepa.collapse import jepa_readouts
    from megajepa.eval.run import as_record
    from megajepa.layout import Example

    pids = tok_pred_ids(tokenizer)
    if len(pids) < k:
        raise SystemExit(f"error: the tokenizer has {len(pids)} <pred_i> tokens, k={k} needed")
    examples = []
    for r in map(as_record, records):
        t, c = pair_views(tokenizer, r["user"], r["assistant"], system=r.get("system"),
                          template=template)
        examples.append(Example("pair", [t, c]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        return jepa_readouts(model, examples, k=k, pred_ids=pids, pad_id=pad, seq_len=seq_len,
                             read_at=read_at, rows_per_forward=rows_per_forward)
    except ValueError as e:  # "example i: ..." is record i
        raise SystemExit(f"error: record {str(e).removeprefix('example ')} (--seq-len)") from None


def collapse_stats(pred: np.ndarray, code: np.ndarray, codes_text, *, seed: int = 0) -> dict:
    """The numbers of the module docstring for read-outs ``[N, D]``."""
    from megajepa.collapse import collapse_metrics, derangement

    out = collapse_metrics(pred, code, seed=seed)
    n = len(pred)
    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    nearest = (norm(pred) @ norm(code).T).argmax(1)
    perm = derangement(n, seed)           # the pairing of shuffled_cos
    same = np.asarray([codes_text[i] == codes_text[j] for i, j in enumerate(nearest)])
    shuffled_same = np.asarray([codes_text[i] == codes_text[perm[i]] for i in range(n)])
    return dict(out, top1=float(same.mean()), top1_chance=float(1.0 / n),
                shuffled_same_code=int(shuffled_same.sum()))


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
    p.add_argument("--read-at", choices=("end", "last"), default=None,
                   help="where Enc(view) is read (default: jepa.read_at of the run's config.yaml, else end)")
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
        read_at = args.read_at or (_run_k(folder)[1] or {}).get("read_at") or "end"
        start = time.time()
        model, tokenizer = load_model(folder, device=args.device, dtype="float32")
        pred, code = readouts(model, tokenizer, records, k=k, seq_len=args.seq_len,
                              template=args.template, read_at=read_at)
        res = dict(model=label or str(folder), path=str(folder), k=k, read_at=read_at,
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
