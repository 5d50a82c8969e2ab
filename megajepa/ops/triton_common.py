"""What the Triton loss kernels (:mod:`megajepa.ops.cosine_triton`,
:mod:`megajepa.ops.stp_triton`) share: the accumulation dtype, the width of a D slice, the
IEEE-rounded norm, and the set-up of their segmented reduction.

The backward kernels write ``d_hidden`` without atomics: the gradient entries are sorted by
the row they write to (host: :func:`segments`), one program runs per entry, and only the first
program of each run of equal rows works (device: :func:`segment_start`), summing the run's
contributions and writing its row once. Imports triton at module import, like its users.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def acc_dtypes(dtype: torch.dtype):
    """``(torch dtype, triton dtype)`` the kernels accumulate in: fp64 for fp64, else fp32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def block_d(D: int, max_block: int) -> int:
    """The D-slice width: the next power of two of ``D``, in [16, ``max_block``]."""
    return min(max(triton.next_power_of_2(D), 16), max_block)


def segments(rows: torch.Tensor):
    """``(rows_sorted, entry, seg_end)``: the rows in stable order, the entry each came from,
    and for each sorted position the end of its run of equal rows."""
    rows_sorted, entry = torch.sort(rows, stable=True)
    return rows_sorted, entry, torch.searchsorted(rows_sorted, rows_sorted, right=True)


@triton.jit
def segment_start(rows_ptr, seg_end_ptr, i):
    """``(row, first, end)`` of sorted entry ``i``: ``first`` when it opens its run of equal
    rows (the one program of the run that works), ``end`` where the run ends."""
    row = tl.load(rows_ptr + i)
    prev = tl.load(rows_ptr + tl.maximum(i - 1, 0))
    return row, (i == 0) | (prev != row), tl.load(seg_end_ptr + i)


@triton.jit
def norm(sum_sq, ACC: tl.constexpr):
    """``sqrt(sum(sum_sq))``: IEEE-rounded in fp32, as torch (``tl.sqrt`` may be approximate
    on a GPU)."""
    if ACC == tl.float64:
        return tl.sqrt(tl.sum(sum_sq, axis=0))
    return tl.sqrt_rn(tl.sum(sum_sq, axis=0))
