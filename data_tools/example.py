"""The unit of training data: one example, its kind and its tokenized views.

A store holds examples (:meth:`data_tools.store.Store.example`); the packer
(:mod:`megajepa.layout`) turns them into rows. It lives with the data, below everything
that trains on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

KINDS = ("pair", "group", "lm")


@dataclass
class Example:
    """One training example: ``kind`` in {pair, group, lm}, ``views`` token-id lists."""

    kind: str
    views: Sequence[Sequence[int]]
    jepa: bool = True  # False: packed as plain LM documents (jepa_ratio dropout, baselines)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Example kind must be one of {KINDS}, got {self.kind!r}")
        n = len(self.views)
        want = {"pair": n == 2, "group": n >= 2, "lm": n == 1}[self.kind]
        if not want:
            need = {"pair": "exactly 2", "group": "at least 2", "lm": "exactly 1"}[self.kind]
            raise ValueError(f"a {self.kind!r} example needs {need} views, got {n}")
        for i, v in enumerate(self.views):
            if len(v) == 0:
                raise ValueError(f"view {i} of a {self.kind!r} example is empty")

    @property
    def num_tokens(self) -> int:
        return sum(len(v) for v in self.views)
