"""Write the embedded NL-RX-style dataset (see :mod:`data_tools.nlrx`) as JSONL (and text).

    python -m data_tools.generate --out data/nlrx --train 8000 --test 2000 --seed 0

writes ``<out>/pairs_{train,test}.jsonl`` (chat ``messages``, the NL-RX-SYNTH system prompt)
and ``<out>/groups_{train,test}.jsonl`` (``{"texts": [...], "regex": ...}``; ``--group-regex``
adds the regex as the last view); ``--formats text`` adds ``<out>/text_{train,test}.txt``, a
plain-text corpus with one document per line (a group's descriptions, then its regex).
Train and test regexes are disjoint.  Same seed, same bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from . import cli, nlrx
from .errors import DataError, run_cli


def _write_jsonl(path: str, records) -> int:
    """Atomic JSONL write (temp file + rename)."""
    return _write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records])


def text_document(group: dict) -> str:
    """One plain-text document from a group: its descriptions as sentences, then the regex."""
    return " ".join(f"{t[0].upper()}{t[1:]}." for t in group["texts"]) + f" As a regular expression: {group['regex']}"


def _write_lines(path: str, lines) -> int:
    """Atomic write of one line per item (temp file + rename)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gen-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("generate", __doc__)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train", type=int, default=8000, help="train records per format (default 8000)")
    p.add_argument("--test", type=int, default=2000, help="test records per format (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--views", type=int, default=4, help="descriptions per group (default 4)")
    p.add_argument("--group-regex", action="store_true", help="append the regex as a view of each group")
    p.add_argument("--paraphrase", type=float, default=0.0,
                   help="fraction of pair descriptions reworded with synonyms (default 0: NL-RX wording)")
    p.add_argument("--formats", default="pairs,groups",
                   help="comma-separated: pairs, groups, text (default: pairs,groups)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    return p


def main(argv=None):
    from tqdm import tqdm

    a = build_parser().parse_args(argv)
    t0 = time.time()
    formats = [f for f in a.formats.split(",") if f]
    for f in formats:
        if f not in ("pairs", "groups", "text"):
            raise DataError(f"unknown format {f!r} (pairs|groups|text)")
    for flag, value, least in (("--train", a.train, 0), ("--test", a.test, 0), ("--views", a.views, 2)):
        if value < least:
            raise DataError(f"{flag} must be >= {least}, got {value}")
    if not 0.0 <= a.paraphrase <= 1.0:
        raise DataError(f"--paraphrase is a fraction in [0, 1], got {a.paraphrase}")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise DataError("exists and is not a directory", file=a.out)
    os.makedirs(a.out, exist_ok=True)
    jobs = [(f, s, n) for f in formats for s, n in (("train", a.train), ("test", a.test)) if n > 0]
    paths = [os.path.join(a.out, f"{f}_{s}.txt" if f == "text" else f"{f}_{s}.jsonl") for f, s, _ in jobs]
    for path in paths:
        if os.path.exists(path) and not a.overwrite:
            raise DataError("output exists; pass --overwrite to replace it", file=path)
    written = {}
    for (f, split, n), path in tqdm(list(zip(jobs, paths)), desc="generate", unit="file", disable=None):
        if f == "pairs":
            recs = [nlrx.chat_record(r["description"], r["regex"])
                    for r in nlrx.generate_pairs(n, a.seed, split=split, paraphrase=a.paraphrase)]
        elif f == "groups":
            recs = nlrx.generate_groups(n, a.seed, split=split, views=a.views, with_regex=a.group_regex)
        else:
            written[path] = _write_lines(path, [text_document(g) for g in
                                                nlrx.generate_groups(n, a.seed, split=split, views=a.views)])
            continue
        written[path] = _write_jsonl(path, recs)
    total = sum(written.values())
    print(f"records written {total} ({', '.join(f'{os.path.basename(p)} {n}' for p, n in written.items())}) "
          f"| dropped 0 | {time.time() - t0:.2f}s -> {a.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
