"""Semantic Tube Prediction spans: which hidden states the STP loss gathers, per packed batch.

STP (the authors' ``stp.py``, ``--linear=random_span``) reads the hidden states the
next-token forward already computes; the rows stay exactly the rows of next-token training
(packed without JEPA segments: ``jepa_ratio=0`` or ``k=0``), zero extra tokens.

**The tube of a document.** Let ``h(i)`` be the last-layer hidden state at position ``i`` of
a document. Its *steps* are ``h(i) - h(i-1)``; the tube is the running sum ``C(o)`` of the
first ``o`` kept steps, ``o = 0 .. L``::

    lm / group view   x0 x1 x2 x3 x4           steps into x1..x4            L = n - 1
                      ^base        ^end
    pair (plain)      <s> u1 u2 <sep> | a1 a2 </s>
                      ^base  ^g-1 ^g                ^end
                      steps into u1 u2, a1 a2 </s>; the step into <sep> (the last TEXT token,
                      the template token between the user and the assistant segments) is
                      skipped, as the reference skips the chat-template tokens between them.
                      L = n - 2. (With a chat template the text view ends with the assistant
                      header; only the step into its last token is skipped.)

A span ``[s, t)`` with ``0 <= s < t <= L`` and ``t - s < L`` has embedding
``span = C(t) - C(s)``; the rest (the parts before and after) has ``rest = C(s) + C(L) - C(t)``.
The loss of a span is ``w * (1 - cos(Pred(rest), span))``; ``Pred`` is the identity or a learned
``D x D`` linear map; ``w`` is the optional length weighting of the reference, with
``l = t - s`` and ``r = L - l``: ``cosine_like = 2rl / (r^2 + l^2)``,
``jaccard_like = 1 - |r - l| / (r + l)``. Documents with ``L < 2`` have no such span: they are
skipped and counted (``stats["skipped_short"]``; an ``lm`` document shorter than 3 tokens).

**Flat form.** With ``B(o)`` the position that ends offset ``o``, both embeddings are signed
sums of six gathered rows of the flat hidden states ``[rows * seq_len, D]``::

    slot        0      1      2      3     4      5
    row         base   B(s)   B(t)   end   g-1    g
    span coef   0     -1     +1      0    +x     -x        x = [t past gap] - [s past gap]
    rest coef  -1     +1     -1     +1    +y     -y        y = [doc has gap] - x

(``g`` slots carry zero coefficients, and point at ``base``, in documents without a gap.)
:class:`StpSpans` holds these as ``index [P, 6]``, ``span_coef [P, 6]``, ``rest_coef [P, 6]``
and ``weight [P]``; the loss (``megajepa.ops.stp``) gathers, combines, and scatters back.

**Samplers** (the reference's that matter), ``N`` spans per document, optional ``max_len``:

* ``start``   (the reference's default): ``s`` uniform in ``[0, L)``, then ``t`` uniform in
  ``[s + 1, min(L, s + max_len)]``, never the whole tube;
* ``uniform`` (``--random_span_uniform``): uniform over all spans with ``t - s < L`` (and
  ``<= max_len``; the reference ignores the maximum in this mode).

Spans are drawn on the CPU where the batch is built, vectorized over documents with numpy,
from ``(seed, epoch, step_in_epoch, rank)``: a resumed run sees the same spans.
Tests: ``tests/test_stp.py`` (sampling, the reference's formula on each unpacked document in
float64, the objective), ``tests/test_ops_stp.py`` (eager vs Triton).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megajepa.layout import ANSWER, PAD_DOC, PRED, to_device

SAMPLERS = ("start", "uniform")
WEIGHTINGS = ("none", "cosine_like", "jaccard_like")
SLOTS = 6
_STREAM = 0x5179  # keeps the span stream apart from the loader's (seed, epoch, i) streams


@dataclass(frozen=True)
class StpSpec:
    """What to sample: ``spans`` per document, ``sampler``, ``max_len`` (None = no limit),
    the length ``weighting`` and whether a linear ``predictor`` maps the rest embedding."""

    spans: int = 1
    sampler: str = "start"
    max_len: int | None = None
    weighting: str = "none"
    predictor: bool = False

    def __post_init__(self):
        if isinstance(self.spans, bool) or not isinstance(self.spans, (int, np.integer)) or self.spans < 1:
            raise ValueError(f"STP spans per document must be an integer >= 1, got {self.spans!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown STP span sampler {self.sampler!r}: expected one of {SAMPLERS}")
        if self.max_len is not None and (isinstance(self.max_len, bool)
                                         or not isinstance(self.max_len, (int, np.integer))
                                         or self.max_len < 1):
            raise ValueError(f"STP max span length must be an integer >= 1 (or None: no limit), "
                             f"got {self.max_len!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown STP length weighting {self.weighting!r}: expected one of {WEIGHTINGS}")


@dataclass
class StpSpans:
    """The spans of one packed batch (see the module docstring).

    ``index [P, 6]`` int64 flat rows of ``hidden.reshape(-1, D)``; ``span_coef`` and
    ``rest_coef [P, 6]`` float32 in {-1, 0, 1}; ``weight [P]`` float32. ``bounds [P, 4]``
    (numpy, stays on the CPU): ``(row, doc_id, s, t)`` of each span, for tests and analysis.
    ``stats``: documents, skipped_short, spans.
    """

    index: torch.Tensor
    span_coef: torch.Tensor
    rest_coef: torch.Tensor
    weight: torch.Tensor
    bounds: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def num_spans(self) -> int:
        return int(self.weight.numel())

    @property
    def weight_sum(self) -> float:
        """The batch's share of the STP denominator (the span count when unweighted)."""
        return float(self.stats["weight_sum"])

    def to(self, device) -> "StpSpans":
        return StpSpans(to_device(self.index, device), to_device(self.span_coef, device),
                        to_device(self.rest_coef, device), to_device(self.weight, device),
                        self.bounds, dict(self.stats))


@dataclass
class Tubes:
    """Per document of a batch (numpy ``[docs]``): ``row``, ``doc`` id, flat ``base`` and
    ``end`` positions, ``gap`` (flat position ``g`` whose step is skipped, -1 if none) and
    tube length ``L``."""

    row: np.ndarray
    doc: np.ndarray
    base: np.ndarray
    end: np.ndarray
    gap: np.ndarray
    length: np.ndarray


def tubes(doc_ids, roles) -> Tubes:
    """The tube of every document of packed rows ``doc_ids, roles [rows, seq_len]``.

    A document is ``lm``/``group``-like (all TEXT) or a pair (TEXT then ANSWER); predictor
    tokens (JEPA segments) are refused: STP batches are packed without them.
    """
    d = np.asarray(doc_ids, dtype=np.int64)
    ro = np.asarray(roles, dtype=np.int64)
    if d.ndim != 2 or d.shape != ro.shape:
        raise ValueError(f"doc_ids and roles must be [rows, seq_len] of one shape, got {d.shape} and {ro.shape}")
    seq_len = d.shape[1]
    if (ro == PRED).any():
        raise ValueError("STP needs rows packed without JEPA segments (jepa_ratio=0 or k=0): "
                         "found predictor tokens")
    flat, fr = d.reshape(-1), ro.reshape(-1)
    n_tok = flat.size
    if n_tok == 0:
        z = np.zeros(0, dtype=np.int64)
        return Tubes(z, z, z, z, z, z)
    new = np.ones(n_tok, dtype=bool)
    new[1:] = (flat[1:] != flat[:-1]) | (np.arange(1, n_tok) % seq_len == 0)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n_tok) - 1
    keep = flat[starts] != PAD_DOC
    n_ans = np.add.reduceat((fr == ANSWER).astype(np.int64), starts)
    first_ans = np.minimum.reduceat(np.where(fr == ANSWER, np.arange(n_tok), n_tok), starts)
    starts, ends, n_ans, first_ans = starts[keep], ends[keep], n_ans[keep], first_ans[keep]
    pair = n_ans > 0
    if (pair & (first_ans != ends - n_ans + 1)).any():
        raise ValueError("STP: a document's ANSWER tokens must follow all its TEXT tokens")
    gap = np.where(pair & (first_ans - 1 > starts), first_ans - 1, -1)
    length = ends - starts - (gap >= 0)
    return Tubes(starts // seq_len, flat[starts], starts, ends, gap, length)


def store_tube_lengths(kind: str, view_lengths, example_offsets) -> np.ndarray:
    """Tube length ``L`` of every document a store's examples make when packed for STP (no
    JEPA segments; before any truncation): an ``lm`` or ``group`` view is a document with
    ``L = n - 1``; a pair ``[text | code]`` is one document with ``L = n - 2`` (``n - 1`` when
    its text is one token: no step to skip). STP needs ``L >= 2``."""
    lengths = np.asarray(view_lengths, dtype=np.int64)
    if kind != "pair":
        return lengths - 1
    offs = np.asarray(example_offsets, dtype=np.int64)
    if len(offs) < 2:
        return np.zeros(0, dtype=np.int64)
    text = lengths[offs[:-1]]
    n = np.add.reduceat(lengths, offs[:-1]) if lengths.size else np.zeros(0, dtype=np.int64)
    return n - 1 - (text >= 2)


def length_weights(length, span_len, weighting: str) -> np.ndarray:
    """The reference's length adjustment of each span (``l = t - s``, ``r = L - l``)."""
    L = np.asarray(length, dtype=np.float64)
    sl = np.asarray(span_len, dtype=np.float64)
    r = L - sl
    if weighting == "none":
        return np.ones_like(L)
    if weighting == "cosine_like":
        return 2.0 * r * sl / (r * r + sl * sl)
    if weighting == "jaccard_like":
        return 1.0 - np.abs(r - sl) / (r + sl)
    raise ValueError(f"unknown STP length weighting {weighting!r}: expected one of {WEIGHTINGS}")


def _cumulative(L, ell):
    """Spans of length 1..ell in a tube of length L: sum_{j<=ell} (L - j + 1)."""
    return ell * (2 * L + 1 - ell) // 2


def draw(length, spec: StpSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``spec.spans`` spans ``(s, t)`` per tube of ``length`` (each >= 2), tube-major order."""
    L = np.repeat(np.asarray(length, dtype=np.int64), spec.spans)
    big = np.iinfo(np.int64).max // 4
    m = np.full_like(L, big) if spec.max_len is None else np.full_like(L, int(spec.max_len))
    if spec.sampler == "start":
        s = np.floor(rng.random(L.size) * L).astype(np.int64)
        hi = np.minimum(L, s + m)
        hi = np.where(s == 0, np.minimum(hi, L - 1), hi)  # never the whole tube
        t = s + 1 + np.floor(rng.random(L.size) * (hi - s)).astype(np.int64)
        return s, t
    # uniform over spans of length 1..mm (there are L - l + 1 of length l): invert the count
    mm = np.minimum(m, L - 1)
    r = np.floor(rng.random(L.size) * _cumulative(L, mm)).astype(np.int64)
    b = 2.0 * L + 1.0
    ell = np.floor((b - np.sqrt(np.maximum(b * b - 8.0 * r, 0.0))) / 2.0).astype(np.int64) + 1
    for _ in range(2):  # float rounding: at most one off either way
        ell = np.where(_cumulative(L, ell) <= r, ell + 1, ell)
        ell = np.where((ell > 1) & (_cumulative(L, ell - 1) > r), ell - 1, ell)
    s = r - _cumulative(L, ell - 1)
    return s, s + ell


def build(tb: Tubes, which: np.ndarray, s: np.ndarray, t: np.ndarray, weighting: str = "none",
          stats: dict | None = None) -> StpSpans:
    """:class:`StpSpans` for spans ``[s, t)`` of the tubes ``which`` (indices into ``tb``)."""
    which, s, t = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (which, s, t))
    base, end, gap, L = tb.base[which], tb.end[which], tb.gap[which], tb.length[which]
    if ((s < 0) | (t <= s) | (t > L) | (t - s >= L)).any():
        raise ValueError("STP spans must satisfy 0 <= s < t <= L and t - s < L")
    has = gap >= 0
    q = gap - 1 - base  # offset whose boundary is g - 1; later offsets sit one position further
    past_s, past_t = has & (s > q), has & (t > q)
    bs, bt = base + s + past_s, base + t + past_t
    x = past_t.astype(np.float32) - past_s.astype(np.float32)
    y = has.astype(np.float32) - x
    g = np.where(has, gap, base)
    index = np.stack([base, bs, bt, end, g - has, g], axis=1)
    zero, one = np.zeros_like(x), np.ones_like(x)
    span_coef = np.stack([zero, -one, one, zero, x, -x], axis=1)
    rest_coef = np.stack([-one, one, -one, one, y, -y], axis=1)
    w = length_weights(L, t - s, weighting).astype(np.float32)
    st = dict(stats or {}, spans=int(s.size), weight_sum=float(w.astype(np.float64).sum()))
    bounds = np.stack([tb.row[which], tb.doc[which], s, t], axis=1)
    return StpSpans(torch.from_numpy(index), torch.from_numpy(span_coef), torch.from_numpy(rest_coef),
                    torch.from_numpy(w), bounds, st)


def span_rng(seed: int, epoch: int, step: int, rank: int) -> np.random.Generator:
    """The span stream of one micro-batch: ``(seed, epoch, step_in_epoch, rank)``."""
    return np.random.default_rng([int(seed), int(epoch), int(step), int(rank), _STREAM])


def sample(doc_ids, roles, spec: StpSpec, rng: np.random.Generator) -> StpSpans:
    """``spec.spans`` spans on every document of packed rows with ``L >= 2``; shorter
    documents are skipped and counted in ``stats["skipped_short"]``."""
    tb = tubes(doc_ids, roles)
    ok = np.flatnonzero(tb.length >= 2)
    s, t = draw(tb.length[ok], spec, rng)
    stats = dict(documents=int(tb.length.size), skipped_short=int(tb.length.size - ok.size))
    return build(tb, np.repeat(ok, spec.spans), s, t, spec.weighting, stats)


def attach(batch, spec: StpSpec, seed: int):
    """Sample the spans of a loader batch (its ``stats`` carry epoch, step_in_epoch, rank)
    into ``batch.stp``; returns the batch. Run it on the CPU, before ``batch.to(device)``."""
    st = batch.stats
    rng = span_rng(seed, st.get("epoch", 0), st.get("step_in_epoch", 0), st.get("rank", 0))
    batch.stp = sample(batch.doc_ids, batch.roles, spec, rng)
    return batch


def make_predictor(dim: int, dtype=None) -> torch.nn.Linear:
    """The reference's linear predictor: ``D x D``, no bias, Xavier-uniform init (gain 1)."""
    lin = torch.nn.Linear(dim, dim, bias=False, dtype=dtype)
    torch.nn.init.xavier_uniform_(lin.weight, gain=1.0)
    return lin


__all__ = ["SAMPLERS", "WEIGHTINGS", "StpSpec", "StpSpans", "Tubes", "attach", "build", "draw",
           "length_weights", "make_predictor", "sample", "span_rng", "store_tube_lengths", "tubes"]
