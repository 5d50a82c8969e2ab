"""The tokenized example store: a directory of memory-mapped numpy arrays and a manifest.

::

    store/
      manifest.json        format, kind, tokenizer, counts, source, sha256 of the arrays, ids
      tokens.npy           int32 [n_tokens]        every view's ids, back to back
      view_offsets.npy     int64 [n_views + 1]     view v = tokens[view_offsets[v]:view_offsets[v+1]]
      example_offsets.npy  int64 [n_examples + 1]  example e = views example_offsets[e] .. [e+1]-1
      tokenizer/           the tokenizer the ids belong to (with the predictor tokens)

    tokens         | <s> a b <sep> | c d </s> | <s> e f <sep> | g </s> | ...
    view_offsets   0               4          7               11       13
    example_offsets 0                         2                        4

All examples of a store have one ``kind`` (pair: 2 views, group: >= 2, lm: 1).  Lengths come
from the offsets without touching the tokens, so a loader can cost a million examples with a
few vectorized numpy operations.  :class:`StoreWriter` writes into a temporary sibling
directory, fsyncs, and renames it into place only when everything succeeded: a failure leaves
no partial store, and the same input gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from .errors import DataError
from .example import Example

FORMAT_VERSION = 1
ARRAYS = ("tokens.npy", "view_offsets.npy", "example_offsets.npy")


class Store:
    """Read side of a store; arrays are memory-mapped (``mmap_mode="r"``)."""

    def __init__(self, path: str):
        self.path = path
        mpath = os.path.join(path, "manifest.json")
        if not os.path.isfile(mpath):
            raise DataError("not a store (no manifest.json)", file=path)
        with open(mpath) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"unsupported store format {self.manifest.get('format_version')}", file=mpath)
        self.kind: str = self.manifest["kind"]
        self.tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
        self.view_offsets = np.load(os.path.join(path, "view_offsets.npy"), mmap_mode="r")
        self.example_offsets = np.load(os.path.join(path, "example_offsets.npy"), mmap_mode="r")

    def __len__(self) -> int:
        return len(self.example_offsets) - 1

    @property
    def view_lengths(self) -> np.ndarray:
        """int64 [n_views]: tokens per view."""
        return np.diff(self.view_offsets)

    @property
    def views_per_example(self) -> np.ndarray:
        """int64 [n_examples]: views per example."""
        return np.diff(self.example_offsets)

    @property
    def pred_ids(self) -> list[int]:
        return list(self.manifest["pred_ids"])

    @property
    def special_ids(self) -> dict:
        return dict(self.manifest["special_ids"])

    @property
    def tokenizer_path(self) -> str:
        return os.path.join(self.path, self.manifest["tokenizer"]["path"])

    def views(self, i: int) -> list[list[int]]:
        """Token ids of each view of example ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range [0, {len(self)})")
        a, b = int(self.example_offsets[i]), int(self.example_offsets[i + 1])
        offs = self.view_offsets[a:b + 1]
        return [self.tokens[offs[j]:offs[j + 1]].tolist() for j in range(b - a)]

    def example(self, i: int, *, jepa: bool = True):
        """Example ``i`` as a :class:`data_tools.example.Example`."""
        return Example(self.kind, self.views(i), jepa=jepa)

    def verify(self) -> None:
        """Recompute the checksum of the arrays; raise :class:`DataError` on mismatch."""
        got = checksum(self.path)
        if got != self.manifest["checksum"]:
            raise DataError(f"checksum mismatch: manifest {self.manifest['checksum']}, data {got}", file=self.path)


def open_store(path: str) -> Store:
    """Open the store at ``path`` (memory-mapped, read-only)."""
    return Store(path)


def checksum(path: str) -> str:
    """``sha256:<hex>`` over the three array files, in a fixed order."""
    h = hashlib.sha256()
    for name in ARRAYS:
        with open(os.path.join(path, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


class StoreWriter:
    """Append examples, then :meth:`commit`; use as a context manager so that any exception
    removes the temporary directory and leaves ``path`` untouched.

    Token ids stream to a raw file; offsets are kept in memory (8 bytes per view)."""

    def __init__(self, path: str, *, kind: str, vocab_size: int, overwrite: bool = False):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path) and not overwrite:
            raise DataError("output exists; pass --overwrite to replace it", file=path)
        self.kind, self.vocab_size = kind, vocab_size
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.tmp-", dir=parent)
        self._raw = open(os.path.join(self.tmp, "tokens.raw"), "wb")
        self._view_ends: list[int] = []
        self._example_ends: list[int] = []
        self.n_tokens = 0

    def add(self, views: list[list[int]]) -> None:
        """Append one example (its views' token ids)."""
        for v in views:
            arr = np.asarray(v, dtype=np.int32)
            self._raw.write(arr.tobytes())
            self.n_tokens += len(arr)
            self._view_ends.append(self.n_tokens)
        self._example_ends.append(len(self._view_ends))

    def __len__(self) -> int:
        return len(self._example_ends)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        if not self._raw.closed:
            self._raw.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, manifest: dict, tokenizer=None) -> str:
        """Write arrays + manifest (+ ``tokenizer/``), fsync, and rename into ``path``."""
        self._raw.close()
        raw = os.path.join(self.tmp, "tokens.raw")
        _write_npy_from_raw(os.path.join(self.tmp, "tokens.npy"), raw, np.int32, self.n_tokens)
        os.remove(raw)
        np.save(os.path.join(self.tmp, "view_offsets.npy"), np.asarray([0] + self._view_ends, dtype=np.int64))
        np.save(os.path.join(self.tmp, "example_offsets.npy"), np.asarray([0] + self._example_ends, dtype=np.int64))
        manifest = dict(manifest, format_version=FORMAT_VERSION, kind=self.kind,
                        checksum=checksum(self.tmp))
        manifest["counts"] = dict(manifest.get("counts", {}), examples=len(self._example_ends),
                                  views=len(self._view_ends), tokens=self.n_tokens)
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(self.tmp, "tokenizer"))
            manifest["tokenizer"] = dict(manifest.get("tokenizer", {}), path="tokenizer")
        with open(os.path.join(self.tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        _fsync_tree(self.tmp)
        os.chmod(self.tmp, 0o755)
        old = None
        if os.path.exists(self.path):  # --overwrite: swap, then delete the old one
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.old-", dir=os.path.dirname(self.path))
            os.rename(self.path, os.path.join(old, "store"))
        os.rename(self.tmp, self.path)
        _fsync_dir(os.path.dirname(self.path))
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return self.path


def _write_npy_from_raw(dst: str, raw: str, dtype, n: int) -> None:
    with open(dst, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, out, 1 << 20)


def _fsync_tree(root: str) -> None:
    for d, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(d)


def _fsync_dir(d: str) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
