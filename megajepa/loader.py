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

Tests: resume mid-epoch (1 and 2 ranks) equals the uninterrupted run; the ranks' rows
partition the epoch; the vectorized costs equal ``layout.example_cost``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from megajepa.layout import PackedBatch, example_cost, layout_cost, pack, plan_rows, truncate_to_fit

log = logging.getLogger(__name__)


def vector_costs(kind: str, view_lengths: np.ndarray, example_offsets: np.ndarray, jepa: np.ndarray, *,
                 k: int, jepa_pairs: str = "next", reverse: bool = False) -> np.ndarray:
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
    kw = dict(k=k, jepa_pairs=jepa_pairs, reverse=reverse)
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


@dataclass
class EpochPlan:
    """Rows of one epoch (lists of example indices) and what did not make it."""

    epoch: int
    rows: list
    jepa: np.ndarray
    steps: int
    stats: dict = field(default_factory=dict)


class PackedLoader:
    """Infinite iterator of :class:`PackedBatch` with ``micro_batch_rows`` rows of ``seq_len``."""

    def __init__(self, store, *, seq_len: int, micro_batch_rows: int, k: int, pred_ids, pad_id: int, seed: int,
                 rank: int = 0, world_size: int = 1, jepa_ratio: float = 1.0, jepa_pairs: str = "next",
                 reverse: bool = False, lm_on_all: bool = False, overflow: str = "drop", window: int = 1024):
        if isinstance(store, str):
            from data_tools.store import open_store

            store = open_store(store)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if not 0.0 <= jepa_ratio <= 1.0:
            raise ValueError(f"jepa_ratio must be in [0, 1], got {jepa_ratio}")
        if overflow not in ("drop", "truncate"):
            raise ValueError(f"overflow must be drop or truncate, got {overflow!r}")
        if micro_batch_rows < 1:
            raise ValueError("micro_batch_rows must be >= 1")
        self.store, self.seq_len, self.rows_per_batch = store, seq_len, micro_batch_rows
        self.k, self.pred_ids, self.pad_id, self.seed = k, list(pred_ids), pad_id, seed
        self.rank, self.world_size, self.jepa_ratio = rank, world_size, jepa_ratio
        self.jepa_pairs, self.reverse, self.lm_on_all = jepa_pairs, reverse, lm_on_all
        self.overflow, self.window = overflow, window
        self.epoch, self.cursor = 0, 0
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
        kw = dict(k=self.k, jepa_pairs=self.jepa_pairs, reverse=self.reverse)
        costs = vector_costs(self.store.kind, self._lengths, self._offsets, jepa, **kw)
        over = np.flatnonzero(costs > self.seq_len)
        truncated = 0
        if self.overflow == "truncate":
            for i in over.tolist():
                cut = truncate_to_fit(self.store.example(i, jepa=bool(jepa[i])), self.seq_len, **kw)
                if cut is not None:
                    costs[i] = example_cost(cut, **kw)
                    truncated += 1
        dropped = int((costs > self.seq_len).sum())
        placed = plan_rows(costs[perm], self.seq_len, window=self.window)
        rows = [perm[r].tolist() for r in placed]
        per_step = self.rows_per_batch * self.world_size
        steps = len(rows) // per_step
        used, tail = rows[: steps * per_step], rows[steps * per_step:]
        real = int(sum(costs[r].sum() for r in used)) if used else 0
        stats = dict(epoch=epoch, examples=n, dropped_too_long=dropped, truncated=truncated, rows=len(rows),
                     steps=steps, tail_rows=len(tail), tail_examples=sum(len(r) for r in tail),
                     efficiency=real / (len(used) * self.seq_len) if used else 0.0)
        if tail or dropped:
            log.info("epoch %d: %d rows dropped as the uneven tail (%d examples), %d examples too long",
                     epoch, len(tail), stats["tail_examples"], dropped)
        self._plan = EpochPlan(epoch, used, jepa, steps, stats)
        return self._plan

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches per rank in the current epoch (the same on every rank)."""
        return self.plan(self.epoch).steps

    @property
    def epoch_stats(self) -> dict:
        """Counts of the current epoch: examples, dropped_too_long, truncated, rows, steps,
        tail_rows/tail_examples (the uneven tail), efficiency (real tokens / capacity)."""
        return dict(self.plan(self.epoch).stats)

    def rows_of(self, epoch: int, step: int, rank: int | None = None) -> list:
        """Example indices of each row of micro-batch ``step`` of ``rank`` in ``epoch``."""
        plan = self.plan(epoch)
        g = step * self.world_size + (self.rank if rank is None else rank)
        return plan.rows[g * self.rows_per_batch:(g + 1) * self.rows_per_batch]

    # ------------------------------------------------------------ iteration
    def __iter__(self):
        return self

    def __next__(self) -> PackedBatch:
        plan = self.plan(self.epoch)
        if self.cursor >= plan.steps:
            if plan.steps == 0:
                raise ValueError(f"epoch {self.epoch} has {plan.stats['rows']} rows: too few for "
                                 f"{self.world_size} rank(s) x {self.rows_per_batch} rows per micro-batch")
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
                     overflow=self.overflow, window=self.window, rows=local)
        batch.stats.update(epoch=self.epoch, step_in_epoch=self.cursor, rank=self.rank)
        self.cursor += 1
        return batch

    # ------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, cursor=self.cursor, seed=self.seed, world_size=self.world_size,
                    micro_batch_rows=self.rows_per_batch, seq_len=self.seq_len)

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (same seed, world size, rows and seq_len)."""
        for key in ("seed", "world_size", "micro_batch_rows", "seq_len"):
            mine = {"micro_batch_rows": self.rows_per_batch}.get(key, getattr(self, key, None))
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]}, this loader {mine}: the epoch plan would differ")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
