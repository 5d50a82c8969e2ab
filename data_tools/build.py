"""Raw records to a ready store in one call: what ``pretrain.py --data.train data.jsonl`` needs.

::

    out_dir/
      tokenizer/   SentencePiece tokenizer trained on the inputs (only when none is given)
      store/       the store (with its own tokenizer/ copy, as every store)
      build.json   inputs (path, size, mtime) and options it was built from

:func:`build_store` takes chat / group / text JSONL or plain text files,
trains a tokenizer when none is given (through the same readers, so bad input is
``error: <file>:<line>: <what>`` before any training), preprocesses into ``store/`` and
returns ``(store_path, description)``: one line saying what it did.  Called again with the
same inputs and options (a resumed run), it reuses what is there; anything else is rebuilt.
"""
from __future__ import annotations

import json
import os
import shutil

from . import preprocess as _pre
from . import readers
from . import train_tokenizer as _tt
from .errors import DataError

BUILD_FILE = "build.json"


def build_store(inputs, out_dir: str, *, tokenizer: str | None = None, vocab_size: int = 8000, k: int = 8,
                field: str | None = None, template: str = "plain", max_doc_tokens: int | None = None,
                on_bad: str = "error") -> tuple[str, str]:
    """Build (or reuse) ``out_dir/store`` from ``inputs``; return ``(store_path, description)``.

    ``max_doc_tokens`` (e.g. the run's ``seq_len``) splits long plain-text documents and is
    ignored for pair and group inputs, whose examples the loader packs whole."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise DataError("no inputs given")
    for path in inputs:
        if not os.path.exists(path):
            raise DataError("no such file", file=path)
    store = os.path.join(out_dir, "store")
    if max_doc_tokens and _first_kind(inputs[0], field=field) != "lm":
        max_doc_tokens = None
    options = dict(tokenizer=tokenizer, vocab_size=vocab_size if tokenizer is None else None,
                   k=k, field=field, template=template,
                   max_doc_tokens=max_doc_tokens, on_bad=on_bad)
    wanted = dict(inputs=[_fingerprint(p) for p in inputs], options=options)
    if read_json(os.path.join(out_dir, BUILD_FILE)) == wanted and os.path.isfile(os.path.join(store, "manifest.json")):
        return store, f"reusing the store {store} (built from {', '.join(inputs)})"
    made_dir = not os.path.exists(out_dir)
    tok_note, trained = f"tokenizer {tokenizer}", None
    try:
        if tokenizer is None:
            tokenizer = trained = os.path.join(out_dir, "tokenizer")
            t = _tt.train(inputs, tokenizer, vocab_size=vocab_size, k=k, field=field, on_bad=on_bad,
                          overwrite=True, progress=False)
            tok_note = f"a new {t['vocab']}-token SentencePiece tokenizer trained on it ({tokenizer})"
        s = _pre.preprocess(inputs, store, tokenizer=tokenizer, k=k, field=field, template=template,
                            max_doc_tokens=max_doc_tokens, on_bad=on_bad, overwrite=True, progress=False)
        _write_json(os.path.join(out_dir, BUILD_FILE), wanted)
    except BaseException:  # leave nothing half-built behind
        if trained:
            shutil.rmtree(trained, ignore_errors=True)
        if made_dir and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    dropped = sum(s["dropped"].values())
    extra = (f", {s['split']['documents']} long documents split into {s['split']['pieces']} pieces"
             if s["split"]["documents"] else "") + (f", {dropped} bad records skipped" if dropped else "")
    return store, (f"preprocessed {', '.join(inputs)} into {store}: {s['records']} records -> {s['examples']} "
                   f"{s['kind']} examples, {s['tokens']} tokens{extra}; {tok_note}")


def _first_kind(source, **kw):
    for r in readers.read_records(source, on_bad=lambda e: None, **kw):
        return r.kind
    return None


def _fingerprint(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def read_json(path: str):
    """The JSON object in ``path``, or None when it is missing or unreadable (a key file)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
