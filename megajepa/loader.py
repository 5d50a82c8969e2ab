"""Store -> packed micro-batches: deterministic for ``(seed, epoch)``, sharded over ranks,
resumable mid-epoch.

One epoch, planned identically on every rank (only cheap arrays, never the tokens)::

    perm  = permutation(n_examples; seed, epoch)          visit order
    jepa  = uniform(seed, epoch)[i] < jepa_ratio           per example i (JEPA-loss dropout)
    cost  = layout cost of each example (vectorized from the store's offsets)
    rows  = plan_rows(cost[perm], seq_len, window)         best fit within windows
            (too long: dropped, or truncated by layout.truncate_to_fit and planned at the cut size)

    rows:  r0 r1 r2 r3 | r4 r5 r6 r7 | r8 r9 r10 r11 | r12 r13        micro_batch_rows=2, world_size=2
           mb0   mb1   | mb2   mb3   | mb4    mb5    | (tail: dropped, reported)
           rank0 rank1 | rank0 rank1 | rank0  rank1
           step 0      | step 1      | step 2

Micro-batch ``g = step * world_size + rank`` holds rows ``[g*R, (g+1)*R)``: every rank gets
``steps_per_epoch`` micro-batches, together they see each row of the epoch exactly once, and
the rows that cannot fill all ranks equally (fewer than ``R * world_size``) are dropped and
counted in ``epoch_stats``.  ``state_dict() = {epoch, cursor}`` (cursor = micro-batches this
rank has consumed in the epoch) restores the iterator exactly; iteration is infinite, the
``epoch`` attribute advances when an epoch is exhausted.

**Budget by examples** (``micro_batch_examples = E > 0``): micro-batch ``g`` holds the
examples ``[g*E, (g+1)*E)`` of the visit order (the too-long ones left out), best-fit packed
into as many rows as they need, so every micro-batch carries exactly E whole examples and a
run that changes only the loss (``--lambda 0`` vs ``--lambda 2``) sees the same examples per
step and the same steps per epoch, paying for JEPA in rows (compute)::

    order: e0 e1 e2 e3 | e4 e5 e6 e7 | e8 e9 e10 e11 | e12 e13    E=2, world_size=2
           mb0   mb1   | mb2   mb3   | mb4    mb5    | (tail: dropped, reported)
    rows:  1     2     | 1     1     | 2      1            (varies; ``fixed_rows`` pads every
                                                             micro-batch to the epoch's maximum)

**Tight rows** (``balance_rows``, not with ``fixed_rows``): each micro-batch's rows are cut to
its longest row, and with an examples budget its examples are spread evenly over the rows
best fit needs (:func:`layout.balance_rows`: largest first into the least-filled row; best
fit's rows kept where that does not fit). Exact: the padding cut off a row's end is attended
by nothing and carries no label, so losses and gradients are those of the padded rows; the
examples of each micro-batch, the steps and ``seen`` do not change, so a run may resume
across the switch. With 8 short examples in rows of 160 (SmolLM2, NL-RX) a step runs the
longest of ~3 balanced rows, ~440 tokens instead of 3 x 160. No rounding of the width to a
multiple of 8: the CPU's GEMMs gain nothing from it and it would add up to 7 padding tokens
a row; the compiled GPU path (``fixed_rows``) keeps one shape, rows of ``seq_len``.

``seen`` counts the examples and real (non-padding) packed tokens that all ranks have
consumed so far; every rank knows the global plan, so every rank holds the same numbers,
and ``state_dict`` carries them across a resume. :func:`budget_steps` turns an epoch budget
into optimizer steps.

Tests: resume mid-epoch (1 and 2 ranks) equals the uninterrupted run; the ranks' rows
partition the epoch; the vectorized costs equal ``layout.example_cost``; with an examples
budget every micro-batch holds E examples and the JEPA and next-token arms see the same
examples step by step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from data_tools.store import open_store
from megajepa.layout import (PackedBatch, _check_read_at, balance_rows, example_cost, layout_cost, pack,
                             plan_rows, truncate_to_fit)
from megajepa.metrics import attended_pairs, layer_mean_pairs

log = logging.getLogger(__name__)


def vector_costs(kind: str, view_lengths: np.ndarray, example_offsets: np.ndarray, jepa: np.ndarray, *,
                 k: int, jepa_pairs: str = "next", reverse: bool = False, read_at: str = "end") -> np.ndarray:
    """``layout_cost`` of every example at once.

    The cost is affine in the view lengths for a fixed (number of views, jepa) pair, so its
    coefficients are read off ``layout_cost`` itself (the single source of truth) with unit
    probes, then applied to all examples with numpy."""
    lengths = np.asarray(view_lengths, dtype=np.int64)
    offs = np.asarray(example_offsets, dtype=np.int64)
    n_views = np.diff(offs)
    n_ex = len(n_views)
    ex_of_view = np.repeat(np.arange(n_ex), n_views)
    slot = np.arange(len(lengths)) - offs[ex_of_view]
    jepa = np.asarray(jepa, dtype=bool)
    slope = np.zeros(len(lengths), dtype=np.int64)
    base = np.zeros(n_ex, dtype=np.int64)
    kw = dict(k=k, jepa_pairs=jepa_pairs, reverse=reverse, read_at=read_at)
    for n in np.unique(n_views).tolist():
        for flag in (False, True):
            sel = (n_views == n) & (jepa == flag)
            if not sel.any():
                continue
            c1 = layout_cost(kind, [1] * n, jepa=flag, **kw)
            s = [layout_cost(kind, [1] * j + [2] + [1] * (n - j - 1), jepa=flag, **kw) - c1 for j in range(n)]
            if layout_cost(kind, [3] * n, jepa=flag, **kw) != c1 + 2 * sum(s):
                raise AssertionError("layout_cost is not affine in the view lengths; vector_costs needs updating")
            base[sel] = c1 - sum(s)
            vsel = sel[ex_of_view]
            slope[vsel] = np.asarray(s, dtype=np.int64)[slot[vsel]]
    return base + np.bincount(ex_of_view, weights=slope * lengths, minlength=n_ex).astype(np.int64)


def unreadable(kind: str, view_lengths: np.ndarray, example_offsets: np.ndarray, jepa: np.ndarray,
               read_at: str) -> np.ndarray:
    """Per example: True where ``read_at`` finds no content token in a view of a JEPA example
    (``layout.readable``, vectorized)."""
    offs = np.asarray(example_offsets, dtype=np.int64)
    if read_at != "last" or kind == "lm" or len(offs) < 2:
        return np.zeros(max(len(offs) - 1, 0), dtype=bool)
    shortest = np.minimum.reduceat(np.asarray(view_lengths), offs[:-1])
    return np.asarray(jepa, dtype=bool) & (shortest < 2)


def budget_steps(loader: "PackedLoader", *, steps: int, epochs: int, grad_accum: int = 1) -> int:
    """Optimizer steps of a run: ``steps``, or with ``epochs > 0`` the whole optimizer steps
    in the first ``epochs`` epoch plans (micro-batches per rank // ``grad_accum``; a last
    partial step is not taken). Raises ``ValueError`` when that is zero."""
    if epochs <= 0:
        return steps
    micro = sum(loader.plan(e).steps for e in range(epochs))
    total = micro // grad_accum
    if total < 1:
        raise ValueError(f"{epochs} epoch(s) of the training data make {micro} micro-batch(es) per rank: "
                         f"fewer than one optimizer step of {grad_accum}; add data, or lower "
                         "data.micro_batch_examples / data.micro_batch_rows or optim.grad_accum")
    return total


@dataclass
class EpochPlan:
    """One epoch: ``batches[g]`` = rows (lists of example indices) of global micro-batch g,
    ``rows`` = all of them in order, per-micro-batch example and real-token counts, and what
    did not make it (``stats``)."""

    epoch: int
    rows: list
    jepa: np.ndarray
    steps: int
    stats: dict = field(default_factory=dict)
    batches: list = field(default_factory=list)
    examples: np.ndarray = None      # [micro-batches] examples per global micro-batch
    tokens: np.ndarray = None        # [micro-batches] real packed tokens per global micro-batch
    max_rows: int = 0
    widths: np.ndarray = None        # [micro-batches] row length of each (seq_len unless balance_rows)


class PackedLoader:
    """Infinite iterator of :class:`PackedBatch` with ``micro_batch_rows`` rows of ``seq_len``,
    or with ``micro_batch_examples`` whole examples in as many rows as they need."""

    def __init__(self, store, *, seq_len: int, micro_batch_rows: int, k: int, pred_ids, pad_id: int, seed: int,
                 rank: int = 0, world_size: int = 1, jepa_ratio: float = 1.0, jepa_pairs: str = "next",
                 reverse: bool = False, lm_on_all: bool = False, overflow: str = "drop", window: int = 1024,
                 read_at: str = "end", micro_batch_examples: int = 0, fixed_rows: bool = False,
                 balance_rows: bool = False, attention_windows=None):
        if isinstance(store, str):
            store = open_store(store)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if not 0.0 <= jepa_ratio <= 1.0:
            raise ValueError(f"jepa_ratio must be in [0, 1], got {jepa_ratio}")
        if overflow not in ("drop", "truncate"):
            raise ValueError(f"overflow must be drop or truncate, got {overflow!r}")
        if micro_batch_rows < 1:
            raise ValueError("micro_batch_rows must be >= 1")
        if micro_batch_examples < 0:
            raise ValueError(f"micro_batch_examples must be >= 0, got {micro_batch_examples}")
        _check_read_at(read_at)
        self.store, self.seq_len, self.rows_per_batch = store, seq_len, micro_batch_rows
        self.k, self.pred_ids, self.pad_id, self.seed = k, list(pred_ids), pad_id, seed
        self.rank, self.world_size, self.jepa_ratio = rank, world_size, jepa_ratio
        self.jepa_pairs, self.reverse, self.lm_on_all = jepa_pairs, reverse, lm_on_all
        self.overflow, self.window = overflow, window
        self.read_at, self.examples_per_batch, self.fixed_rows = read_at, micro_batch_examples, fixed_rows
        self.balance_rows = balance_rows and not fixed_rows  # a compiled model needs one shape
        # each layer's sliding window, for the FLOP count (None, or all None: full attention)
        self.attention_windows = list(attention_windows or [])
        if not any(w is not None for w in self.attention_windows):
            self.attention_windows = None
        self.epoch, self.cursor = 0, 0
        self.seen = {"examples": 0, "tokens": 0}
        self._plan: EpochPlan | None = None
        self._lengths = np.asarray(store.view_lengths)
        self._offsets = np.asarray(store.example_offsets)

    # ------------------------------------------------------------ planning
    def plan(self, epoch: int) -> EpochPlan:
        """The (cached) plan of ``epoch``; identical on every rank."""
        if self._plan is not None and self._plan.epoch == epoch:
            return self._plan
        n = len(self.store)
        perm = np.random.default_rng([self.seed, epoch, 0]).permutation(n)
        jepa = np.random.default_rng([self.seed, epoch, 1]).random(n) < self.jepa_ratio
        kw = dict(k=self.k, jepa_pairs=self.jepa_pairs, reverse=self.reverse, read_at=self.read_at)
        costs = vector_costs(self.store.kind, self._lengths, self._offsets, jepa, **kw)
        short = unreadable(self.store.kind, self._lengths, self._offsets, jepa, self.read_at)
        costs[short] = self.seq_len + 1  # never placed; counted as too_short
        over = np.flatnonzero((costs > self.seq_len) & ~short)
        truncated = 0
        if self.overflow == "truncate":
            for i in over.tolist():
                cut = truncate_to_fit(self.store.example(i, jepa=bool(jepa[i])), self.seq_len, **kw)
                if cut is not None:
                    costs[i] = example_cost(cut, **kw)
                    truncated += 1
        too_short = int(short.sum())
        dropped = int((costs > self.seq_len).sum()) - too_short
        if self.examples_per_batch:
            batches, tail = self._by_examples(perm, costs)
        else:
            placed = plan_rows(costs[perm], self.seq_len, window=self.window)
            rows = [perm[r].tolist() for r in placed]
            r = self.rows_per_batch
            n_mb = len(rows) // (r * self.world_size) * self.world_size
            batches, tail = [rows[g * r:(g + 1) * r] for g in range(n_mb)], rows[n_mb * r:]
        steps = len(batches) // self.world_size
        used = [row for b in batches for row in b]
        examples = np.array([sum(len(row) for row in b) for b in batches], dtype=np.int64)
        tokens = np.array([sum(int(costs[row].sum()) for row in b) for b in batches], dtype=np.int64)
        max_rows = max((len(b) for b in batches), default=0)
        widths = np.array([max(int(costs[row].sum()) for row in b) if self.balance_rows else self.seq_len
                           for b in batches], dtype=np.int64)
        n_rows = np.array([max_rows if self.fixed_rows else len(b) for b in batches], dtype=np.int64)
        delivered = int((n_rows * widths).sum())
        stats = dict(epoch=epoch, examples=n, dropped_too_long=dropped, too_short=too_short,
                     truncated=truncated, rows=len(used) + len(tail), steps=steps, tail_rows=len(tail),
                     tail_examples=sum(len(r) for r in tail), max_rows=max_rows,
                     examples_per_step=int(examples.sum()) // max(steps, 1),
                     efficiency=int(tokens.sum()) / delivered if delivered else 0.0)
        if tail or dropped or too_short:
            log.info("epoch %d: %d rows dropped as the uneven tail (%d examples), %d examples too long, "
                     "%d without content to read", epoch, len(tail), stats["tail_examples"], dropped, too_short)
        self._plan = EpochPlan(epoch, used, jepa, steps, stats, batches, examples, tokens, max_rows, widths)
        return self._plan

    def _by_examples(self, perm, costs):
        """Micro-batches of ``micro_batch_examples`` consecutive placeable examples of the
        visit order, each best-fit packed on its own (``balance_rows``: then spread evenly over
        those rows); the uneven tail is returned apart."""
        e, seq_len = self.examples_per_batch, self.seq_len
        order = perm[costs[perm] <= seq_len]
        n_mb = len(order) // (e * self.world_size) * self.world_size
        batches = []
        for g in range(n_mb):
            group = order[g * e:(g + 1) * e]
            rows = plan_rows(costs[group], seq_len, window=e)
            if self.balance_rows:
                rows = balance_rows(costs[group], len(rows), seq_len) or rows
            batches.append([group[r].tolist() for r in rows])
        rest = order[n_mb * e:]
        tail = [rest[r].tolist() for r in plan_rows(costs[rest], seq_len, window=self.window)]
        return batches, tail

    def _attended_pairs(self, batch: PackedBatch):
        """The (q, kv) pairs one layer attends, averaged over the layers' windows."""
        if self.attention_windows is None:
            return attended_pairs(batch.doc_ids, batch.roles)
        return layer_mean_pairs(batch.doc_ids, batch.roles, batch.position_ids, self.attention_windows)

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches per rank in the current epoch (the same on every rank)."""
        return self.plan(self.epoch).steps

    @property
    def epoch_stats(self) -> dict:
        """Counts of the current epoch: examples, dropped_too_long, too_short (no content to
        read), truncated, rows, steps, tail_rows/tail_examples (the uneven tail), max_rows (of a
        micro-batch), examples_per_step (all ranks), efficiency (real tokens / capacity)."""
        return dict(self.plan(self.epoch).stats)

    def rows_of(self, epoch: int, step: int, rank: int | None = None) -> list:
        """Example indices of each row of micro-batch ``step`` of ``rank`` in ``epoch``."""
        plan = self.plan(epoch)
        g = step * self.world_size + (self.rank if rank is None else rank)
        return plan.batches[g] if g < len(plan.batches) else []

    # ------------------------------------------------------------ iteration
    def __iter__(self):
        return self

    def __next__(self) -> PackedBatch:
        plan = self.plan(self.epoch)
        if self.cursor >= plan.steps:
            if plan.steps == 0:
                per = (f"{self.examples_per_batch} examples" if self.examples_per_batch
                       else f"{self.rows_per_batch} rows")
                raise ValueError(f"epoch {self.epoch} has {plan.stats['rows']} rows: too few for "
                                 f"{self.world_size} rank(s) x {per} per micro-batch")
            self.epoch, self.cursor = self.epoch + 1, 0
            plan = self.plan(self.epoch)
        rows = self.rows_of(self.epoch, self.cursor)
        examples, local, j = [], [], 0
        for r in rows:
            local.append(list(range(j, j + len(r))))
            examples.extend(self.store.example(i, jepa=bool(plan.jepa[i])) for i in r)
            j += len(r)
        batch = pack(examples, self.seq_len, k=self.k, pred_ids=self.pred_ids, pad_id=self.pad_id,
                     jepa_pairs=self.jepa_pairs, reverse=self.reverse, lm_on_all=self.lm_on_all,
                     overflow=self.overflow, window=self.window, rows=local, read_at=self.read_at,
                     min_rows=plan.max_rows if self.fixed_rows else 0,
                     width=int(plan.widths[self.cursor * self.world_size + self.rank]))
        # The loop's counts, on the host where the batch is built (no device reads later).
        batch.stats.update(epoch=self.epoch, step_in_epoch=self.cursor, rank=self.rank,
                           label_tokens=batch.num_label_tokens, pairs=batch.num_pairs,
                           attended_pairs=self._attended_pairs(batch))
        g = self.cursor * self.world_size  # every rank consumes its micro-batch of this cursor
        self.seen["examples"] += int(plan.examples[g:g + self.world_size].sum())
        self.seen["tokens"] += int(plan.tokens[g:g + self.world_size].sum())
        self.cursor += 1
        return batch

    def _seen_at(self, epoch: int, cursor: int) -> dict:
        """``seen`` recomputed from the plans (for a state saved without it)."""
        w = self.world_size
        plans = [self.plan(e) for e in range(epoch)] + [self.plan(epoch)]
        ends = [p.steps * w for p in plans[:-1]] + [cursor * w]
        return {key: int(sum(getattr(p, key)[:end].sum() for p, end in zip(plans, ends)))
                for key in ("examples", "tokens")}

    # ------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, cursor=self.cursor, seed=self.seed, world_size=self.world_size,
                    micro_batch_rows=self.rows_per_batch, seq_len=self.seq_len,
                    micro_batch_examples=self.examples_per_batch, read_at=self.read_at,
                    seen_examples=self.seen["examples"], seen_tokens=self.seen["tokens"])

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (same seed, world size, rows and seq_len)."""
        mine = {"micro_batch_rows": self.rows_per_batch, "micro_batch_examples": self.examples_per_batch}
        for key in ("seed", "world_size", "micro_batch_rows", "seq_len", "micro_batch_examples", "read_at"):
            have = mine.get(key, getattr(self, key, None))
            got = state.get(key, {"micro_batch_examples": 0, "read_at": "end"}.get(key, have))
            if got != have:
                raise ValueError(f"loader state has {key}={got}, this loader {have}: the epoch plan would differ")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        if "seen_examples" in state:
            self.seen = {"examples": int(state["seen_examples"]), "tokens": int(state["seen_tokens"])}
        else:
            self.seen = self._seen_at(self.epoch, self.cursor)
