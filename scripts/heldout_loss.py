#!/usr/bin/env python3
"""Held-out next-token loss (and STP cosine) of a trained model on plain text.

    python scripts/heldout_loss.py --model runs/stp/export --data heldout.txt [--out heldout.json]

``--model``: a Hugging Face folder, or a run / checkpoint directory (as ``megajepa.eval``).
``--data``: a store (``python -m data_tools.preprocess``), or anything data_tools reads as text
(a ``.txt`` file, one document per line; JSONL with a text field, ``--text-field``), tokenized
here with the model's tokenizer, documents longer than ``--seq-len`` split into row-sized
pieces (as training splits them). Every document is packed without JEPA segments, one row per
forward (nothing dropped), and scored in one pass::

    val_loss        next-token cross-entropy per label token (nats), over all documents
    val_stp_cosine  mean cos(rest, span) of one STP span per document (the reference's start
                    sampler, spans drawn from --seed): how straight the hidden-state "tube" is
                    whether or not the model was trained with STP

Prints one line; ``--out`` also writes the numbers as JSON. A missing input is one
``error:`` line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.errors import DataError, run_cli  # noqa: E402
from megajepa.cli import HelpFormatter, must_exist, positive_int  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/heldout_loss.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face folder, or a run / checkpoint directory")
    p.add_argument("--data", required=True, help="held-out store, .txt file or JSONL with a text field")
    p.add_argument("--text-field", "--field", default=None, help="JSONL field holding the text (default: text)")
    p.add_argument("--seq-len", type=positive_int, default=256, help="row length (training's data.seq_len)")
    p.add_argument("--seed", type=int, default=0, help="seed of the STP spans")
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


def heldout(model, tokenizer, store, seq_len: int, seed: int = 0) -> dict:
    """The numbers of the module docstring for ``model`` on every document of ``store``."""
    import torch

    from megajepa import stp
    from megajepa.loader import PackedLoader
    from megajepa.objective import forward

    loader = PackedLoader(store, seq_len=seq_len, micro_batch_rows=1, k=0, pred_ids=[],
                          pad_id=tokenizer.pad_token_id, seed=0, jepa_ratio=0.0)
    ce = cos = 0.0
    labels = spans = 0
    with torch.no_grad():
        for _ in range(loader.steps_per_epoch):
            b = stp.attach(next(loader), stp.StpSpec(), seed=seed)
            out = forward(model, b, objective="stp", lbd=1.0)
            ce += out.lm_loss.item() * out.num_label_tokens
            cos += out.cosine.item() * out.num_pairs
            labels += out.num_label_tokens
            spans += out.num_pairs
    if not labels:
        raise DataError("no document to score (all dropped or empty)", file=store.path)
    dropped = loader.epoch_stats
    return {"val_loss": ce / labels, "val_stp_cosine": cos / max(spans, 1), "label_tokens": labels,
            "documents": len(store), "spans": spans,
            "dropped_too_long": int(dropped.get("dropped_too_long", 0))}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    must_exist(args.model, "--model")
    must_exist(args.data, "--data")
    import torch

    from data_tools.preprocess import preprocess
    from data_tools.store import open_store
    from megajepa.eval.run import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, tok = load_model(args.model, device=args.device, dtype="float32")
    with tempfile.TemporaryDirectory(prefix="heldout_") as tmp:
        path = args.data
        if not os.path.isfile(os.path.join(path, "manifest.json")):  # text: tokenize it here
            tok.save_pretrained(os.path.join(tmp, "tok"))
            path = os.path.join(tmp, "store")
            preprocess([args.data], path, tokenizer=os.path.join(tmp, "tok"), fmt="text",
                       field=args.text_field, max_doc_tokens=args.seq_len, progress=False)
        res = heldout(model, tok, open_store(path), args.seq_len, args.seed)
    res.update(model=str(args.model), data=str(args.data), seq_len=args.seq_len)
    print(f"held-out {res['documents']} documents, {res['label_tokens']} label tokens: "
          f"val_loss={res['val_loss']:.4f} val_stp_cosine={res['val_stp_cosine']:.4f}")
    if args.out:
        tmp_out = args.out + ".tmp"
        with open(tmp_out, "w") as fh:
            json.dump(res, fh, indent=2)
        os.replace(tmp_out, args.out)
    return res


if __name__ == "__main__":
    sys.exit(run_cli(main))
