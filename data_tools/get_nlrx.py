"""Get the real NL-RX data as chat JSONL: download the LLM-JEPA authors' public copies, or
take local copies of them.

    python -m data_tools.get_nlrx --out data/                                  # download (network)
    python -m data_tools.get_nlrx --out data/ --from path/to/llm-jepa/datasets  # local copies

NL-RX (Locascio et al., EMNLP 2016; github nicholaslocascio/deep-regex) pairs English
descriptions of line sets with regular expressions: NL-RX-SYNTH (grammar-generated
descriptions) and NL-RX-TURK (Mechanical Turk paraphrases of them).  The LLM-JEPA authors
publish both as chat JSONL (system / user / assistant) in github galilai-group/llm-jepa,
folder ``datasets/``: ``synth_train.jsonl`` (8,000), ``synth_test.jsonl`` (2,000), and
``turk_train.jsonl`` / ``turk_test.jsonl`` likewise.  This command fetches them at a pinned
commit (one attempt per file), checks every record with the data_tools readers, checks the
SHA-256 of a download against the published files, and writes
``<out>/nlrx_<set>_<train|test>.jsonl`` byte for byte.  Nothing is written unless every file
is good.  Without network, download the four files by hand and pass ``--from``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

from . import cli, readers
from .errors import DataError, run_cli

COMMIT = "6d7d0d1f296441beff39a95c801db7f683e3b353"
BASE_URL = f"https://raw.githubusercontent.com/galilai-group/llm-jepa/{COMMIT}/datasets/"
SHA256 = {  # the published files at COMMIT
    "synth_train.jsonl": "ca959f108fb5a9c363910bca46cd9de69ead3bac016ed2564c74be39ba634e46",
    "synth_test.jsonl": "acfce67c9284bb97dc0b89ad9412b00f6464faf2dfbd2581dd4930140716e45d",
    "turk_train.jsonl": "61d5d6df65a7a899c6f45948a37729bb84b84b4943750f8fa38c1042250ec664",
    "turk_test.jsonl": "5cab7cfadd071a15e0956cc32e1d4d1bbe99750868b8f064d55cc569f5aefbd3",
}
SETS = ("synth", "turk")
SPLITS = ("train", "test")


def fetch(url: str, timeout: float) -> bytes:
    """The bytes at ``url`` (http(s) or file), one attempt; a failure is a :class:`DataError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the user's own URL
            return r.read()
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download: HTTP {e.code} {e.reason}", file=url) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download ({reason}); without network, get the files by hand "
                        "and pass --from DIR", file=url) from None


def local_copy(folder: str, name: str) -> tuple[str, bytes]:
    """``folder/name`` (or ``folder/nlrx_name``) as ``(path, bytes)``."""
    for candidate in (name, f"nlrx_{name}"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return path, f.read()
    raise DataError(f"no {name} (or nlrx_{name}) in this folder", file=folder)


def check_records(data: bytes, label: str) -> int:
    """Number of chat records in ``data``; the first bad one is a :class:`DataError` at ``label:line``."""
    fd, tmp = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            n = sum(1 for _ in readers.read_records(tmp, fmt="chat"))
        except DataError as e:
            raise DataError(e.what, file=label, line=e.line) from None
    finally:
        os.unlink(tmp)
    if n == 0:
        raise DataError("no records", file=label)
    return n


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("get_nlrx", __doc__)
    p.add_argument("--out", required=True, help="folder to write nlrx_<set>_<split>.jsonl into")
    p.add_argument("--sets", default="synth", help="comma-separated: synth, turk (default: synth)")
    p.add_argument("--from", dest="source", default=None,
                   help="read local copies from this folder (synth_train.jsonl ...) instead of downloading")
    p.add_argument("--base-url", default=BASE_URL,
                   help="where the files are (default: the llm-jepa repository's datasets/ at a pinned commit)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per download (default 60)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    return p


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    t0 = time.time()
    sets = [s for s in a.sets.split(",") if s]
    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise DataError(f"--sets: unknown set {bad[0] if bad else repr(a.sets)} (one of {', '.join(SETS)})")
    if a.timeout <= 0:
        raise DataError(f"--timeout must be > 0, got {a.timeout}")
    if a.source is not None and not os.path.isdir(a.source):
        raise DataError("no such directory (--from)", file=a.source)
    names = [f"{s}_{split}.jsonl" for s in sets for split in SPLITS]
    outs = [os.path.join(a.out, f"nlrx_{n}") for n in names]
    for path in outs:
        if os.path.exists(path) and not a.overwrite:
            raise DataError("output exists; pass --overwrite to replace it", file=path)
    got, notes = {}, []
    for name in names:  # everything is read and checked before anything is written
        if a.source is not None:
            label, data = local_copy(a.source, name)
        else:
            label = a.base_url.rstrip("/") + "/" + name
            data = fetch(label, a.timeout)
        n = check_records(data, label)
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[name]:
            if a.source is None and a.base_url == BASE_URL:
                raise DataError(f"checksum mismatch: sha256 {digest}, published {SHA256[name]}", file=label)
            notes.append(f"{name} differs from the published file")
        got[name] = (data, n)
    written = _write_all(a.out, {out: got[name][0] for name, out in zip(names, outs)})
    counts = ", ".join(f"{os.path.basename(o)} {got[n][1]}" for n, o in zip(names, outs))
    print(f"records {sum(n for _, n in got.values())} ({counts}){'; ' + '; '.join(notes) if notes else ''} | "
          f"{time.time() - t0:.2f}s -> {a.out}")
    return written


def _write_all(folder: str, files: dict) -> dict:
    """Write every file through a temporary sibling and rename them all at the end."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder: {e.strerror or e}", file=folder) from None
    tmps = {}
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=".get_nlrx-", dir=folder)
            tmps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return {p: len(d) for p, d in files.items()}


if __name__ == "__main__":
    sys.exit(run_cli(main))
