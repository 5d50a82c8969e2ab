"""Examples -> packed rows: the layout that lets one forward pass compute LM + JEPA.

An :class:`Example` is a list of tokenized *views* (each ends with its end-of-sequence
token) and a kind:

* ``pair``  ``[text, code]``: next-token loss on ``code`` given ``text`` (or on every token
  with ``lm_on_all``); JEPA pair ``Pred(text) -> Enc(code)``.
* ``group`` ``[v1 .. vn]``: next-token loss on every view; JEPA pairs ``Pred(vi) -> Enc(vj)``
  (``jepa_pairs="next"``: i -> i+1; ``"all"``: every ordered i != j).
* ``lm``    ``[tokens]``: plain next-token document, no JEPA.

Each example becomes one or more *documents*; a whole example always lands in one row.
For a ``pair`` with ``k = 2`` (T = text, C = code, P = predictor)::

    document A                          document B
    tokens : t0 t1 t2 c0 c1 c2 p1 p2  | c0 c1 c2
    roles  : T  T  T  A  A  A  P  P   | T  T  T
    pos    : 0  1  2  3  4  5  3  4   | 0  1  2      (predictors continue after the text)
    labels : .  .  c0 c1 c2 .  .  .   | .  .  .      (labels are already shifted)
    JEPA   :                   ^pred  |       ^target

``reverse`` swaps the roles of the views: predictors follow ``code`` in document B and the
target is the last text token of document A. With ``k = 0`` the predictor read-out is the
last token of the source view (``Pred`` is the identity).

For a ``group`` every view is its own document ``[vi (TEXT) | p1..pk (PRED)]``; ``Enc(vj)`` is
read from the last token of vj's own document, which the next-token loss runs anyway.

**Where a view is read** (``read_at``). Above is ``"end"``: at the view's end token, which no
loss supervises in document B. ``"last"`` reads the last *content* token (the one before the
end token), as the paper's code reads Llama (index -2, before ``<|eot_id|>``), on both sides:
``Enc(view)`` at the view's last content token, and the predictors follow the source view's
content, not its end token (the paper's ``user <pred_k..1> <|eot_id|>``). Same pair, ``k = 2``,
where ``t2`` and ``c2`` are the end tokens (``<sep>``, ``</s>``)::

    document A                          document B
    tokens : t0 t1 t2 c0 c1 c2 p1 p2  | c0 c1
    roles  : T  T  A  A  A  A  P  P   | T  T         (t2: ANSWER, hidden from the predictors)
    pos    : 0  1  2  3  4  5  2  3   | 0  1         (predictors continue after t1)
    labels : .  .  c0 c1 c2 .  .  .   | .  .
    JEPA   :                   ^pred  |    ^target

``t2`` keeps its hidden state and its label (ANSWER sees TEXT and ANSWER); with ``k = 0`` the
predictor read-out is ``t1``; document B drops the code's end token, which nothing reads, so
a pair costs ``|T| + 2|C| - 1 + k``. ``reverse``: document B is ``c0 c1 [p1 p2]`` and the
target is ``t1`` in document A. ``group``: a source view's end token becomes ANSWER in its
own document, its predictors continue after its content, and ``Enc(vj)`` is read at vj's last
content token. Every view of a JEPA example then needs at least 2 tokens; :func:`pack` drops
(and counts in ``stats["too_short"]``) an example with a shorter one.

Labels are stored *shifted*: ``labels[i]`` is the token to predict at position ``i`` (or
``IGNORE_INDEX``), so no shift ever crosses a document boundary.

Padding (tokens after the last document of a row) has ``doc_ids == -1``, ``roles == TEXT``,
``position_ids == 0`` and ``labels == IGNORE_INDEX``; the attention rule lets it attend only
to itself, so it never produces NaN and never influences a real token.

Invariants checked by the tests: no token lost or duplicated, no example split across
rows, rows never longer than ``seq_len``, the same input gives the same rows.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from data_tools.example import Example  # noqa: F401 - the packer's input, defined with the data

TEXT, ANSWER, PRED = 0, 1, 2
IGNORE_INDEX = -100
PAD_DOC = -1
READ_AT = ("end", "last")
JEPA_PAIRS = ("next", "all")
OVERFLOW = ("drop", "truncate")


@dataclass
class _Doc:
    tokens: list
    positions: list
    roles: list
    labels: list


@dataclass
class _ExampleLayout:
    docs: list                     # list[_Doc]
    pairs: list                    # ((doc, offset), (doc, offset)): pred read-out -> target


@dataclass
class PackedBatch:
    """Packed rows. Tensors are ``[rows, width]`` (``width``: ``seq_len``, or the one given to
    :func:`pack` to cut the rows) except the JEPA indices ``[pairs]`` and ``label_index``
    ``[label tokens]``, flat indices into ``rows * width``. ``label_index``
    (the positions whose label is not ``IGNORE_INDEX``, ascending) is built on the host with
    the rows, so the LM loss selects its positions without reading the device."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    doc_ids: torch.Tensor
    roles: torch.Tensor
    labels: torch.Tensor
    pred_index: torch.Tensor
    target_index: torch.Tensor
    label_index: torch.Tensor
    stats: dict = field(default_factory=dict)
    stp: object = None  # megajepa.stp.StpSpans of an STP batch (stp.attach), else None

    @property
    def num_label_tokens(self) -> int:
        return int(self.label_index.numel())

    @property
    def num_pairs(self) -> int:
        return int(self.pred_index.numel())

    @property
    def shape(self):
        return tuple(self.input_ids.shape)

    def to(self, device) -> "PackedBatch":
        moved = {k: to_device(getattr(self, k), device) for k in _TENSORS}
        stp = self.stp.to(device) if self.stp is not None else None
        return PackedBatch(**moved, stats=self.stats, stp=stp)


_TENSORS = ("input_ids", "position_ids", "doc_ids", "roles", "labels", "pred_index",
            "target_index", "label_index")


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``. A host tensor bound for CUDA goes through pinned memory and an
    asynchronous copy (the host does not wait for it; the device stream orders its use)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _shifted(tokens, on):
    """labels[i] = tokens[i + 1] where ``on[i + 1]``, else IGNORE_INDEX."""
    out = [IGNORE_INDEX] * len(tokens)
    for i in range(len(tokens) - 1):
        if on[i + 1]:
            out[i] = tokens[i + 1]
    return out


def _with_preds(view, pred_ids, k, labels, hide_end=False):
    """``[view (TEXT) | p1..pk (PRED)]``, predictor positions continuing after the view, or,
    with ``hide_end``, after its content (its end token becomes ANSWER, unseen by them)."""
    n = len(view)
    hide = hide_end and k > 0
    start = n - 1 if hide else n
    roles = [TEXT] * n + [PRED] * k
    if hide:
        roles[n - 1] = ANSWER
    return _Doc(list(view) + list(pred_ids[:k]), list(range(n)) + list(range(start, start + k)),
                roles, list(labels) + [IGNORE_INDEX] * k)


def _check_read_at(read_at):
    if read_at not in READ_AT:
        raise ValueError(f"read_at must be one of {READ_AT}, got {read_at!r}")


def readable(ex: Example, read_at: str = "end") -> bool:
    """False when ``read_at="last"`` has no content token to read in some view of a JEPA
    example (a view of fewer than 2 tokens: its end token alone)."""
    _check_read_at(read_at)
    return not (read_at == "last" and ex.jepa and ex.kind != "lm"
                and min(len(v) for v in ex.views) < 2)


def _group_pairs(n, jepa_pairs, reverse):
    if jepa_pairs == "next":
        pairs = [(i, i + 1) for i in range(n - 1)]
    elif jepa_pairs == "all":
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    else:
        raise ValueError(f"jepa_pairs must be one of {JEPA_PAIRS}, got {jepa_pairs!r}")
    return [(j, i) for i, j in pairs] if reverse else pairs


def layout_example(ex: Example, *, k: int, pred_ids: Sequence[int], jepa_pairs="next",
                   reverse=False, lm_on_all=False, read_at="end") -> _ExampleLayout:
    """Documents of one example and its JEPA read-outs as ``((doc, off), (doc, off))``."""
    if ex.jepa and ex.kind != "lm" and len(pred_ids) < k:
        raise ValueError(f"k={k} predictor tokens requested but only {len(pred_ids)} ids given")
    if not readable(ex, read_at):
        raise ValueError(f"read_at='last' reads the token before each view's end token, but a "
                         f"view has {min(len(v) for v in ex.views)} token(s)")
    jepa = ex.jepa and ex.kind != "lm"
    last = read_at == "last"
    cut = 1 if last else 0  # tokens after a view's read-out (its end token with read_at=last)
    if ex.kind == "lm":
        (v,) = ex.views
        return _ExampleLayout([_Doc(list(v), list(range(len(v))), [TEXT] * len(v),
                                    _shifted(v, [True] * len(v)))], [])
    if ex.kind == "pair":
        text, code = (list(v) for v in ex.views)
        t, c = len(text), len(code)
        on = [lm_on_all] * t + [True] * c
        tokens = text + code
        lm = _shifted(tokens, on)
        if not jepa:
            return _ExampleLayout([_Doc(tokens, list(range(t + c)), [TEXT] * t + [ANSWER] * c,
                                        lm)], [])
        kk, tc, cc = k, t - cut, c - cut  # tc, cc: the views as read (content only if last)
        if not reverse:
            roles = [TEXT] * t + [ANSWER] * c + [PRED] * kk
            if last and kk:
                roles[t - 1] = ANSWER  # the predictors follow the text's content, not its end
            a = _Doc(tokens + list(pred_ids[:kk]), list(range(t + c)) + list(range(tc, tc + kk)),
                     roles, lm + [IGNORE_INDEX] * kk)
            b = _Doc(code[:cc], list(range(cc)), [TEXT] * cc, [IGNORE_INDEX] * cc)
            src = (0, t + c + kk - 1) if kk else (0, tc - 1)
            return _ExampleLayout([a, b], [(src, (1, cc - 1))])
        a = _Doc(tokens, list(range(t + c)), [TEXT] * t + [ANSWER] * c, lm)
        b = _with_preds(code[:cc], pred_ids, kk, [IGNORE_INDEX] * cc)
        return _ExampleLayout([a, b], [((1, cc + kk - 1), (0, tc - 1))])
    # group
    views = [list(v) for v in ex.views]
    pairs = _group_pairs(len(views), jepa_pairs, reverse) if jepa else []
    sources = {i for i, _ in pairs}
    docs = []
    for i, v in enumerate(views):
        lab = _shifted(v, [True] * len(v))
        docs.append(_with_preds(v, pred_ids, k if i in sources else 0, lab, hide_end=last))
    src = lambda i: len(docs[i].tokens) - 1 if k else len(views[i]) - 1 - cut  # noqa: E731
    reads = [((i, src(i)), (j, len(views[j]) - 1 - cut)) for i, j in pairs]
    return _ExampleLayout(docs, reads)


def example_cost(ex: Example, *, k: int, jepa_pairs="next", reverse=False,
                 read_at="end") -> int:
    """Tokens ``ex`` occupies in a packed row (see the module docstring for the layout)."""
    lengths = [len(v) for v in ex.views]
    return layout_cost(ex.kind, lengths, k=k, jepa=ex.jepa, jepa_pairs=jepa_pairs,
                       reverse=reverse, read_at=read_at)


def layout_cost(kind, lengths, *, k, jepa=True, jepa_pairs="next", reverse=False,
                read_at="end") -> int:
    """:func:`example_cost` from view lengths alone (the loader's vectorizable form)."""
    _check_read_at(read_at)
    total = sum(lengths)
    if not jepa or kind == "lm":
        return total
    if kind == "pair":  # code appears twice (in A, and alone in B without its end if last)
        return total + lengths[1] + k - (1 if read_at == "last" else 0)
    n = len(lengths)
    n_sources = n - 1 if jepa_pairs == "next" else n
    return total + n_sources * k


def plan_rows(costs: Sequence[int], seq_len: int, *, window: int = 1024) -> list[list[int]]:
    """Deterministic best-fit packing of items into rows of capacity ``seq_len``.

    Items are taken in windows of ``window`` consecutive indices; within a window they are
    placed largest first (ties by index) into the open row with the least room that still
    fits, else a new row. Rows are emitted in creation order at the end of each window.
    Items with ``cost > seq_len`` (or ``cost <= 0``) are not placed; the caller counts them.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    costs = np.asarray(costs, dtype=np.int64)
    rows: list[list[int]] = []
    for start in range(0, len(costs), max(1, window)):
        idx = np.arange(start, min(start + max(1, window), len(costs)))
        order = idx[np.argsort(-costs[idx], kind="stable")]
        room: list[int] = []
        members: list[list[int]] = []
        for i in order.tolist():
            c = int(costs[i])
            if c > seq_len or c <= 0:
                continue
            best, best_room = -1, seq_len + 1
            for r, free in enumerate(room):
                if c <= free < best_room:
                    best, best_room = r, free
                    if free == c:
                        break
            if best < 0:
                room.append(seq_len - c)
                members.append([i])
            else:
                room[best] -= c
                members[best].append(i)
        rows.extend(sorted(m) for m in members)
    return rows


def balance_rows(costs: Sequence[int], n_rows: int, seq_len: int) -> list[list[int]] | None:
    """Items spread evenly over ``n_rows`` rows of capacity ``seq_len``: largest first (ties by
    index) into the least-filled row (ties: the first), members of each row ascending. ``None``
    when an item does not fit the least-filled row (then no row holds it; keep the
    :func:`plan_rows` plan) or an item is not placeable (``cost > seq_len`` or ``<= 0``)."""
    costs = np.asarray(costs, dtype=np.int64)
    if n_rows < 1 or len(costs) < n_rows or ((costs > seq_len) | (costs <= 0)).any():
        return None
    fill = [0] * n_rows
    members: list[list[int]] = [[] for _ in range(n_rows)]
    for i in np.argsort(-costs, kind="stable").tolist():
        r = min(range(n_rows), key=fill.__getitem__)
        if fill[r] + costs[i] > seq_len:
            return None
        fill[r] += int(costs[i])
        members[r].append(i)
    return [sorted(m) for m in members]


def truncate_to_fit(ex: Example, seq_len: int, *, k: int, jepa_pairs="next",
                    reverse=False, read_at="end") -> Example | None:
    """The truncation rule: repeatedly drop the token just before the end-of-sequence token
    of the currently longest view (ties: the first such view) until the example fits;
    ``None`` if a view would fall below 2 tokens first. Views keep their last token."""
    views = [list(v) for v in ex.views]
    lengths = [len(v) for v in views]
    kw = dict(k=k, jepa=ex.jepa, jepa_pairs=jepa_pairs, reverse=reverse, read_at=read_at)
    while layout_cost(ex.kind, lengths, **kw) > seq_len:
        i = int(np.argmax(lengths))
        if lengths[i] <= 2:
            return None
        lengths[i] -= 1
    views = [v[: n - 1] + v[-1:] for v, n in zip(views, lengths)]
    return Example(ex.kind, views, jepa=ex.jepa)


def pack(examples: Sequence[Example], seq_len: int, *, k: int, pred_ids: Sequence[int],
         pad_id: int, jepa_pairs: str = "next", reverse: bool = False,
         lm_on_all: bool = False, overflow: str = "drop", window: int = 1024,
         rows: Sequence[Sequence[int]] | None = None,
         min_rows: int = 0, read_at: str = "end", width: int | None = None) -> PackedBatch:
    """Pack whole examples into rows of ``seq_len`` tokens (see the module docstring).

    ``overflow`` says what happens to an example longer than a row: ``"drop"`` (counted in
    ``stats["dropped"]``) or ``"truncate"`` (:func:`truncate_to_fit`, counted in
    ``stats["truncated"]``; dropped if even that cannot fit). An example that ``read_at``
    cannot read (:func:`readable`) is dropped, counted in ``stats["too_short"]``. ``rows``
    is an optional precomputed plan (lists of indices into ``examples``); ``min_rows`` pads
    the batch with empty rows so data-parallel ranks can agree on a shape. ``width`` is the
    row length of the batch (default ``seq_len``; at least its longest row, at most
    ``seq_len``): a row's trailing padding is attended by nothing and carries no label, so
    cutting it changes no loss or gradient.
    """
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    kw = dict(k=k, jepa_pairs=jepa_pairs, reverse=reverse, read_at=read_at)
    examples = list(examples)
    dropped = truncated = too_short = 0
    fitted: list[Example | None] = []
    for ex in examples:
        if not readable(ex, read_at):
            fitted.append(None)
            too_short += 1
        elif example_cost(ex, **kw) <= seq_len:
            fitted.append(ex)
        elif overflow == "truncate" and (cut := truncate_to_fit(ex, seq_len, **kw)) is not None:
            fitted.append(cut)
            truncated += 1
        else:
            fitted.append(None)
            dropped += 1
    costs = [example_cost(ex, **kw) if ex is not None else seq_len + 1 for ex in fitted]
    if rows is None:
        rows = plan_rows(costs, seq_len, window=window)
    n_rows = max(len(rows), min_rows)
    width = seq_len if width is None else int(width)
    if not 0 < width <= seq_len:
        raise ValueError(f"width={width} must be in [1, seq_len={seq_len}]")
    shape = (n_rows, width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    doc_ids = np.full(shape, PAD_DOC, dtype=np.int64)
    roles = np.full(shape, TEXT, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    pred_index, target_index = [], []
    real = 0
    for r, members in enumerate(rows):
        cursor, doc = 0, 0
        for i in members:
            ex = fitted[i]
            if ex is None:
                raise ValueError(f"row plan places example {i}, which does not fit seq_len={seq_len}")
            lay = layout_example(ex, pred_ids=pred_ids, lm_on_all=lm_on_all, **kw)
            starts = []
            for d in lay.docs:
                n = len(d.tokens)
                if cursor + n > width:
                    raise ValueError(f"row plan overflows row {r} (seq_len={seq_len}, width={width})")
                sl = slice(cursor, cursor + n)
                input_ids[r, sl] = d.tokens
                position_ids[r, sl] = d.positions
                roles[r, sl] = d.roles
                labels[r, sl] = d.labels
                doc_ids[r, sl] = doc
                starts.append(r * width + cursor)
                cursor += n
                doc += 1
            for (sd, so), (td, to) in lay.pairs:
                pred_index.append(starts[sd] + so)
                target_index.append(starts[td] + to)
        real += cursor
    capacity = n_rows * width
    stats = dict(examples=len(examples), dropped=dropped, truncated=truncated,
                 too_short=too_short, rows=n_rows,
                 real_tokens=real, capacity=capacity,
                 efficiency=(real / capacity) if capacity else 0.0)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    return PackedBatch(t(input_ids), t(position_ids), t(doc_ids), t(roles), t(labels),
                       torch.tensor(pred_index, dtype=torch.long),
                       torch.tensor(target_index, dtype=torch.long),
                       t(np.flatnonzero(labels.reshape(-1) != IGNORE_INDEX)), stats=stats)


def sample_jepa(examples: Sequence[Example], ratio: float, rng: random.Random) -> list[Example]:
    """JEPA-loss dropout: keep the JEPA segments on a ``ratio`` fraction of the examples
    (each independently); the others are packed as plain LM documents."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"jepa_ratio must be in [0, 1], got {ratio}")
    return [Example(ex.kind, ex.views, jepa=ex.jepa and rng.random() < ratio) for ex in examples]
