"""Tokenize inputs once into a memory-mapped store (see :mod:`data_tools.store`).

    python -m data_tools.preprocess data.jsonl --tokenizer tok/ --out store/ [--template plain|chat]
    python -m data_tools.preprocess corpus.txt --tokenizer tok/ --out store/ --max-doc-tokens 512

Inputs: chat-``messages`` JSONL (pair), paraphrase-group JSONL or the ``cestwc/paraphrase``
one-sentence-per-record layout (group), plain text (lm: a ``.txt`` file with one document per
line, or JSONL with a text field, ``--text-field``), or any of these through ``datasets``
(``--hf``: a hub name ``org/name``, a ``save_to_disk`` folder, a folder of data files or one
data file).  Views are laid out by :mod:`data_tools.templates`; ``--max-doc-tokens N`` splits
each plain-text document longer than N tokens into consecutive pieces of at most N tokens
(each an lm example; together exactly the document's tokens).  Records are tokenized in
chunks, in ``--workers`` processes (order kept), and written atomically: a bad record stops
the run with ``error: <file>:<line>: <what>`` (exit 2) and leaves no output, unless
``--on-bad skip`` counts and skips it.  The same command gives a byte-identical store.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import multiprocessing as mp
import os
import sys
import time

from . import cli, readers, templates
from .errors import DataError, run_cli
from .store import StoreWriter
from .tokenizer import load_tokenizer, pred_ids, special_ids


def encode_records(tok, records, *, template: str = "plain", system_in_plain: bool = False) -> list:
    """Views (lists of token ids) of each record, or a :class:`DataError` in its place."""
    strings, where = [], []
    for r_i, r in enumerate(records):  # collect every string to encode in one batched call
        if r.kind == "pair":
            fields = ["assistant"] if template == "chat" else ["user", "assistant"]
            items = [(f, r.data[f]) for f in fields]
        elif r.kind == "group":
            items = list(enumerate(r.data))
        else:
            items = [(0, r.data)]
        for key, v in items:
            if isinstance(v, str):
                strings.append(v)
                where.append((r_i, key))
    ids = _encode_batch(tok, strings) if strings else []
    pre = {w: i for w, i in zip(where, ids)}
    vocab = len(tok)
    out = []
    for r_i, r in enumerate(records):
        get = lambda key, v: pre.get((r_i, key), v)  # noqa: E731
        if r.kind == "pair":
            d = r.data
            user = d["user"] if template == "chat" else get("user", d["user"])
            views = list(templates.pair_views(tok, user, get("assistant", d["assistant"]), system=d["system"],
                                              template=template, system_in_plain=system_in_plain))
        elif r.kind == "group":
            views = templates.group_views(tok, [get(i, v) for i, v in enumerate(r.data)])
        else:
            views = [templates.lm_view(tok, get(0, r.data))]
        out.append(_check_ids(views, vocab, r))
    return out


def _encode_batch(tok, strings):
    """Batched ids without special tokens (the Rust backend directly when there is one)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(strings, add_special_tokens=False)]
    return tok(strings, add_special_tokens=False)["input_ids"]


def _check_ids(views, vocab, r):
    for j, v in enumerate(views):
        if min(v) < 0 or max(v) >= vocab:
            bad = next(t for t in v if not 0 <= t < vocab)
            return DataError(f"token id {bad} outside the vocabulary (size {vocab}) in view {j}",
                             file=r.file, line=r.line, skippable=True)
    return views


def split_document(view: list[int], max_tokens: int) -> list[list[int]]:
    """A long lm view as ``ceil(len / max_tokens)`` consecutive pieces of near-equal length.

        [<s> a b c d e f g </s>], max_tokens 4  ->  [<s> a b] [c d e] [f g </s>]

    Concatenated, the pieces are ``view`` (no token lost or repeated); each is at most
    ``max_tokens`` long and, when split, at least about half that (no one-token tails).
    Only the first piece starts with ``<s>`` and only the last ends with ``</s>``."""
    n = -(-len(view) // max_tokens)
    if n <= 1:
        return [view]
    bounds = [len(view) * i // n for i in range(n + 1)]
    return [view[a:b] for a, b in zip(bounds, bounds[1:])]


_W: dict = {}


def _init_worker(tok, opts):
    _W["tok"], _W["opts"] = tok, opts


def _work(chunk):
    return encode_records(_W["tok"], chunk, **_W["opts"])


def _chunks(it, size):
    it = iter(it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def preprocess(inputs, out, *, tokenizer, fmt="auto", field=None, hf=False, hf_split="train", hf_config=None,
               hf_streaming=False, template="plain", system_in_plain=False, k=None, workers=1, chunk_size=1000,
               max_doc_tokens=None, overwrite=False, on_bad="error", progress=None) -> dict:
    """Tokenize ``inputs`` into the store ``out``; returns the summary dict (also in the manifest)."""
    from tqdm import tqdm

    t0 = time.time()
    _check_options(inputs, template=template, k=k, workers=workers, chunk_size=chunk_size,
                   max_doc_tokens=max_doc_tokens, on_bad=on_bad)
    tok, added = load_tokenizer(tokenizer, k=k)
    dropped: collections.Counter = collections.Counter()
    skip = readers.skip_counter(on_bad, dropped)
    streams, kinds = [], set()
    for src in inputs:
        streams.append(readers.read_records(src, fmt=fmt, field=field, hf=hf, hf_split=hf_split,
                                            hf_config=hf_config, hf_streaming=hf_streaming, on_bad=skip))
    records = itertools.chain.from_iterable(streams)
    n_read = 0
    opts = dict(template=template, system_in_plain=system_in_plain)

    def counted(chunks):
        nonlocal n_read
        for c in chunks:
            n_read += len(c)
            kinds.update(r.kind for r in c)
            if len(kinds) > 1:
                raise DataError(f"inputs mix example kinds {sorted(kinds)}; one store holds one kind",
                                file=c[0].file, line=c[0].line)
            if max_doc_tokens and kinds != {"lm"}:
                raise DataError(f"--max-doc-tokens splits plain-text (lm) documents; this input holds "
                                f"{next(iter(kinds))} examples", file=c[0].file)
            yield c

    pool = None
    writer = None
    split_docs = pieces = 0
    bar = tqdm(unit="rec", desc="preprocess", disable=None if progress is None else not progress, file=sys.stderr)
    try:
        chunks = counted(_chunks(records, chunk_size))
        if workers > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            pool = mp.get_context("fork").Pool(workers, _init_worker, (tok, opts))
            results = pool.imap(_work, chunks)
        else:
            results = (encode_records(tok, c, **opts) for c in chunks)
        for res in results:
            for views in res:
                if isinstance(views, DataError):
                    readers.bad_record(skip, views)
                    continue
                if writer is None:
                    writer = StoreWriter(out, kind=next(iter(kinds)), vocab_size=len(tok), overwrite=overwrite)
                if max_doc_tokens and len(views[0]) > max_doc_tokens:
                    parts = split_document(views[0], max_doc_tokens)
                    split_docs, pieces = split_docs + 1, pieces + len(parts)
                    for part in parts:
                        writer.add([part])
                    continue
                writer.add(views)
            bar.update(len(res))
        if writer is None:
            raise DataError("no examples: every record was empty or skipped", file=inputs[0] if inputs else None)
        summary = dict(records=n_read, examples=len(writer), dropped=dict(sorted(dropped.items())),
                       views=len(writer._view_ends), tokens=writer.n_tokens, kind=writer.kind,
                       split=dict(documents=split_docs, pieces=pieces))
        manifest = dict(
            counts=dict(records=n_read, dropped=summary["dropped"], split=summary["split"]),
            source=dict(inputs=list(inputs), format=fmt, field=field, hf=hf,
                        hf_split=hf_split if hf else None, hf_config=hf_config, template=template,
                        system_in_plain=system_in_plain, max_doc_tokens=max_doc_tokens),
            tokenizer=dict(source=tokenizer, vocab_size=len(tok), added_tokens=added,
                           class_name=type(tok).__name__),
            pred_ids=pred_ids(tok), special_ids=special_ids(tok))
        writer.commit(manifest, tokenizer=tok)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    summary["seconds"] = round(time.time() - t0, 3)
    summary["records_per_s"] = round(n_read / max(summary["seconds"], 1e-9), 1)
    summary["added_tokens"] = added
    return summary


def _check_options(inputs, *, template, k, workers, chunk_size, max_doc_tokens, on_bad) -> None:
    """Impossible option values fail before any work, one line each."""
    if not inputs:
        raise DataError("no inputs given")
    if template not in ("plain", "chat"):
        raise DataError(f"unknown template {template!r} (plain|chat)")
    if on_bad not in ("error", "skip"):
        raise DataError(f"--on-bad must be error or skip, got {on_bad!r}")
    for flag, value, least in (("--workers", workers, 1), ("--chunk-size", chunk_size, 1), ("--k-pred", k, 0),
                               ("--max-doc-tokens", max_doc_tokens, 2)):
        if value is not None and value < least:
            raise DataError(f"{flag} must be >= {least}, got {value}")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("preprocess", __doc__)
    p.add_argument("inputs", nargs="+", help="input files (or dataset names/paths with --hf)")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer directory (from data_tools.train_tokenizer, or any Hugging Face one), "
                        "or a hub name org/name")
    p.add_argument("--format", default="auto", help="auto|chat|group|cestwc|text (default: auto, from the first record)")
    p.add_argument("--field", "--text-field", dest="field", default=None,
                   help="record field holding the data (default: messages / texts / text)")
    p.add_argument("--hf", action="store_true",
                   help="inputs are Hugging Face datasets: hub names org/name, save_to_disk folders, "
                        "folders of data files, or single .json/.jsonl/.csv/.parquet/.txt files")
    p.add_argument("--hf-split", default="train", help="split to read with --hf (default: train)")
    p.add_argument("--hf-config", default=None, help="dataset configuration name with --hf (default: none)")
    p.add_argument("--hf-streaming", action="store_true",
                   help="stream a hub dataset with --hf instead of downloading it first")
    p.add_argument("--template", default="plain", choices=["plain", "chat"],
                   help="pair layout: plain '[bos] user <sep> | assistant </s>' or the tokenizer's chat template (default: plain)")
    p.add_argument("--system-in-plain", action="store_true", help="keep the system prompt in the plain template (default: dropped)")
    p.add_argument("--k-pred", type=int, default=None, help="predictor tokens <pred_1..K> to ensure (default: keep the tokenizer's, else 8)")
    p.add_argument("--max-doc-tokens", type=int, default=None,
                   help="split plain-text documents longer than this many tokens (<s> and </s> included) into "
                        "pieces of at most this size; use the training row length (default: keep whole)")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: 1)")
    p.add_argument("--chunk-size", type=int, default=1000, help="records per work unit (default: 1000)")
    p.add_argument("--on-bad", default="error", choices=["error", "skip"],
                   help="a bad record (invalid UTF-8, malformed JSON, missing field, empty view): "
                        "stop with its file and line (default: error) or skip it and count it (skip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    return p


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    s = preprocess(a.inputs, a.out, tokenizer=a.tokenizer, fmt=a.format, field=a.field, hf=a.hf,
                   hf_split=a.hf_split, hf_config=a.hf_config, hf_streaming=a.hf_streaming, template=a.template,
                   system_in_plain=a.system_in_plain, k=a.k_pred, workers=a.workers,
                   chunk_size=a.chunk_size, max_doc_tokens=a.max_doc_tokens, overwrite=a.overwrite,
                   on_bad=a.on_bad)
    print(summary_line(s, a.out))
    if s["added_tokens"]:
        print(f"added to the tokenizer (resize embeddings): {' '.join(s['added_tokens'])}")
    return s


def summary_line(s: dict, out: str) -> str:
    """One line: records read, examples written, what was dropped and why, tokens, speed, where."""
    dropped = ", ".join(f"{n} {why}" for why, n in s["dropped"].items()) or "none"
    split = (f" | split {s['split']['documents']} long documents into {s['split']['pieces']} pieces"
             if s["split"]["documents"] else "")
    return (f"records read {s['records']} | examples written {s['examples']} ({s['kind']}) | dropped "
            f"{sum(s['dropped'].values())} ({dropped}){split} | views {s['views']} | tokens {s['tokens']} | "
            f"{s['seconds']:.2f}s ({s['records_per_s']:.0f} records/s) -> {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main, skip_hint=True))
