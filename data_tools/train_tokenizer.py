"""Train a SentencePiece tokenizer (BPE or unigram) with the megajepa specials.

    python -m data_tools.train_tokenizer data.jsonl --out tok/ --vocab-size 8000 --model bpe --k-pred 8

Reads the same inputs as :mod:`data_tools.preprocess` (chat JSONL: user and assistant text;
group JSONL / ``cestwc`` layout: every view; plain text; ``--hf`` datasets) and saves a
directory that ``transformers.AutoTokenizer.from_pretrained`` loads, with ids
``<pad>=0 <unk>=1 <s>=2 </s>=3 <sep>=4 <pred_1..K>=5..4+K``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from . import readers
from .errors import DataError, run_cli
from .tokenizer import pred_ids, special_ids, train_sentencepiece


def record_texts(records, counter):
    """Every string of every record (token-id views are skipped)."""
    for r in records:
        counter[0] += 1
        if r.kind == "pair":
            vals = [r.data["user"], r.data["assistant"]]
        elif r.kind == "group":
            vals = r.data
        else:
            vals = [r.data]
        for v in vals:
            if isinstance(v, str):
                counter[1] += 1
                yield v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_tools.train_tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="input files (or dataset names/paths with --hf)")
    p.add_argument("--out", required=True, help="tokenizer directory to create")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size incl. specials (default 8000; soft limit)")
    p.add_argument("--model", default="bpe", choices=["bpe", "unigram"], help="SentencePiece model type (default bpe)")
    p.add_argument("--k-pred", type=int, default=8, help="predictor tokens <pred_1..K> (default 8)")
    p.add_argument("--format", default="auto", help="auto|chat|group|cestwc|text")
    p.add_argument("--field", default=None, help="record field holding the data")
    p.add_argument("--hf", action="store_true", help="inputs are datasets.load_dataset names or local paths")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--hf-config", default=None)
    p.add_argument("--max-sentences", type=int, default=0, help="sample at most this many strings (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    return p


def main(argv=None):
    from tqdm import tqdm

    a = build_parser().parse_args(argv)
    t0 = time.time()
    if os.path.exists(a.out) and not a.overwrite:
        raise DataError("output exists; pass --overwrite to replace it", file=a.out)
    parent = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tok-", dir=parent)
    counter = [0, 0]
    try:
        recs = (r for src in a.inputs for r in readers.read_records(
            src, fmt=a.format, field=a.field, hf=a.hf, hf_split=a.hf_split, hf_config=a.hf_config))
        texts = tqdm(record_texts(recs, counter), desc="train_tokenizer", unit="str", disable=None)
        tok = train_sentencepiece(texts, tmp, vocab_size=a.vocab_size, model_type=a.model, k=a.k_pred,
                                  input_sentence_size=a.max_sentences)
        if counter[1] == 0:
            raise DataError("no text to train on", file=a.inputs[0])
        if os.path.exists(a.out):
            shutil.rmtree(a.out)
        os.chmod(tmp, 0o755)
        os.rename(tmp, a.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"records read {counter[0]} | strings {counter[1]} | vocab {len(tok)} ({a.model}) | "
          f"specials {special_ids(tok)} | pred ids {pred_ids(tok)} | {time.time() - t0:.2f}s -> {a.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
