"""Train a SentencePiece tokenizer (BPE or unigram) with the megajepa specials.

    python -m data_tools.train_tokenizer data.jsonl --out tok/ --vocab-size 8000 --model bpe --k-pred 8
    python -m data_tools.train_tokenizer corpus.txt --out tok/ --vocab-size 8000

Reads the same inputs as :mod:`data_tools.preprocess` (chat JSONL: user and assistant text;
group JSONL / ``cestwc`` layout: every view; plain text, one document per line, or a JSONL
text field; ``--hf`` datasets) and saves a directory that
``transformers.AutoTokenizer.from_pretrained`` loads, with ids
``<pad>=0 <unk>=1 <s>=2 </s>=3 <sep>=4 <pred_1..K>=5..4+K``.  The whole input is read and
checked first (bad input: ``error: <file>:<line>: <what>``, exit 2, nothing written; or
``--on-bad skip``), into a temporary one-sentence-per-line corpus that SentencePiece then
trains on; lines longer than SentencePiece's sentence limit are cut at spaces, so long
documents are not silently ignored.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time

from . import cli, readers
from .errors import DataError, run_cli
from .tokenizer import pred_ids, special_ids, train_sentencepiece

MAX_SENTENCE_BYTES = 4000  # below SentencePiece's max_sentence_length (4192), which drops longer lines


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


def sentences(text: str, max_bytes: int = MAX_SENTENCE_BYTES):
    """The lines of ``text``, each cut at spaces into pieces of at most ``max_bytes`` UTF-8 bytes
    (a run without spaces longer than that is cut at a character boundary)."""
    for line in text.splitlines():
        if not line.strip():
            continue
        while len(line.encode("utf-8")) > max_bytes:
            head = line.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
            cut = head.rfind(" ")
            cut = cut if cut > 0 else len(head)
            if line[:cut].strip():
                yield line[:cut]
            line = line[cut:].lstrip(" ")
        if line.strip():
            yield line


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("train_tokenizer", __doc__)
    p.add_argument("inputs", nargs="+", help="input files (or dataset names/paths with --hf)")
    p.add_argument("--out", required=True, help="tokenizer directory to create")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size incl. specials (default 8000; soft limit)")
    p.add_argument("--model", default="bpe", choices=["bpe", "unigram"], help="SentencePiece model type (default bpe)")
    p.add_argument("--k-pred", type=int, default=8, help="predictor tokens <pred_1..K> (default 8)")
    p.add_argument("--format", default="auto", help="auto|chat|group|cestwc|text (default: auto, from the first record)")
    p.add_argument("--field", "--text-field", dest="field", default=None,
                   help="record field holding the data (default: messages / texts / text)")
    p.add_argument("--hf", action="store_true",
                   help="inputs are Hugging Face datasets (hub names org/name, save_to_disk folders, data files)")
    p.add_argument("--hf-split", default="train", help="split to read with --hf (default: train)")
    p.add_argument("--hf-config", default=None, help="dataset configuration name with --hf (default: none)")
    p.add_argument("--hf-streaming", action="store_true", help="stream a hub dataset with --hf")
    p.add_argument("--max-sentences", type=int, default=0,
                   help="SentencePiece trains on a random sample of at most this many lines (default 0 = all)")
    p.add_argument("--on-bad", default="error", choices=["error", "skip"],
                   help="a bad record: stop with its file and line (default: error) or skip it and count it (skip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    return p


def train(inputs, out, *, vocab_size=8000, model="bpe", k=8, fmt="auto", field=None, hf=False, hf_split="train",
          hf_config=None, hf_streaming=False, max_sentences=0, on_bad="error", overwrite=False,
          progress=None) -> dict:
    """Read and check ``inputs``, train SentencePiece, save the tokenizer to ``out`` atomically.

    Returns a summary: records, strings, dropped (by reason), vocab, tokenizer, seconds."""
    from tqdm import tqdm

    t0 = time.time()
    if not inputs:
        raise DataError("no inputs given")
    if max_sentences < 0:
        raise DataError(f"--max-sentences must be >= 0, got {max_sentences}")
    if on_bad not in ("error", "skip"):
        raise DataError(f"--on-bad must be error or skip, got {on_bad!r}")
    if os.path.exists(out) and not overwrite:
        raise DataError("output exists; pass --overwrite to replace it", file=out)
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tok-", dir=parent)
    except OSError as e:
        raise DataError(f"cannot create the output: {e.strerror or e}", file=out) from None
    counter = [0, 0]
    dropped: collections.Counter = collections.Counter()
    skip = readers.skip_counter(on_bad, dropped)
    try:
        corpus = os.path.join(tmp, "corpus.txt")
        n_lines = 0
        with open(corpus, "w", encoding="utf-8") as f:  # read and check everything before training
            recs = (r for src in inputs for r in readers.read_records(
                src, fmt=fmt, field=field, hf=hf, hf_split=hf_split, hf_config=hf_config,
                hf_streaming=hf_streaming, on_bad=skip))
            bar = tqdm(record_texts(recs, counter), desc="read", unit="str", file=sys.stderr,
                       disable=None if progress is None else not progress)
            for text in bar:
                for line in sentences(text):
                    f.write(line + "\n")
                    n_lines += 1
        if n_lines == 0:
            raise DataError("no text to train on", file=inputs[0])
        with open(corpus, encoding="utf-8") as f:
            tok = train_sentencepiece((line.rstrip("\n") for line in f), tmp, vocab_size=vocab_size,
                                      model_type=model, k=k, input_sentence_size=max_sentences)
        os.remove(corpus)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(records=counter[0], strings=counter[1], dropped=dict(sorted(dropped.items())), vocab=len(tok),
                model=model, tokenizer=tok, seconds=round(time.time() - t0, 3))


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    s = train(a.inputs, a.out, vocab_size=a.vocab_size, model=a.model, k=a.k_pred, fmt=a.format, field=a.field,
              hf=a.hf, hf_split=a.hf_split, hf_config=a.hf_config, hf_streaming=a.hf_streaming,
              max_sentences=a.max_sentences, on_bad=a.on_bad, overwrite=a.overwrite)
    gone = ", ".join(f"{n} {why}" for why, n in s["dropped"].items()) or "none"
    tok = s["tokenizer"]
    print(f"records read {s['records']} | dropped {sum(s['dropped'].values())} ({gone}) | strings {s['strings']} | "
          f"vocab {s['vocab']} ({a.model}) | specials {special_ids(tok)} | pred ids {pred_ids(tok)} | "
          f"{s['seconds']:.2f}s -> {a.out}")
    return s


if __name__ == "__main__":
    sys.exit(run_cli(main, skip_hint=True))
