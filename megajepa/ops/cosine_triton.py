"""Triton kernels behind :func:`megajepa.ops.cosine.fused_cosine_loss`.

Imports triton at module import; :mod:`megajepa.ops.cosine` imports this module only when the
Triton path runs, so machines without triton never touch it.

Forward, one program per pair ``p`` (``a = hidden[pred[p]]``, ``b = hidden[target[p]]``)::

    for each BLOCK_D slice of the row:  dot += a*b,  sa += a*a,  sb += b*b   (fp32, fp64 for fp64)
    na, nb = sqrt(sa), sqrt(sb);  cos[p] = dot / (max(na, EPS) * max(nb, EPS))

then ``mean_cos = cos.mean()``, ``loss = 1 - mean_cos`` (``[P]`` floats; not worth a kernel).

Backward is a segmented reduction, not atomics. The gradient entries ``e`` (pred side of every
pair, plus the target side unless ``stopgrad_target``) are sorted by the row they write to::

    rows    = [pred..., target...]          e in [0, 2P)
    sorted  = 3 3 3 7 9 9 ...               (stable sort; seg_end by searchsorted)
    program   ^     ^ ^          one program per entry; only a segment's first entry works

and the first program of a segment sums the segment's contributions in fp32 registers and
writes its ``d_hidden`` row once, in ``hidden``'s dtype. With ``s = -grad_loss / P``::

    d self = s * ( sum_e other_e / (max(na,EPS) max(nb,EPS))  -  x * sum_e cos_e / (max(n_self,EPS) n_self) )

where the second sum only counts entries with ``n_self >= EPS`` (the derivative of
``max(n, EPS)``). Repeated targets and rows that are both pred and target are just longer
segments. No fp32 ``[N, D]`` buffer, no atomics, deterministic.

Indices are range-checked on CPU only; on CUDA the check would synchronize, and the packed
layout guarantees it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from megajepa.ops.cosine_eps import EPS
from megajepa.ops.triton_common import acc_dtypes, block_d, norm, segment_start, segments

MAX_BLOCK_D = 1024


@triton.jit
def _cosine_fwd_kernel(
    h_ptr, pred_ptr, tgt_ptr, cos_ptr, na_ptr, nb_ptr, D, stride_h,
    EPS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
):
    p = tl.program_id(0)
    a_base = h_ptr + tl.load(pred_ptr + p) * stride_h
    b_base = h_ptr + tl.load(tgt_ptr + p) * stride_h
    dot = tl.zeros([BLOCK_D], dtype=ACC)
    sa = tl.zeros([BLOCK_D], dtype=ACC)
    sb = tl.zeros([BLOCK_D], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        a = tl.load(a_base + offs, mask=m, other=0.0).to(ACC)
        b = tl.load(b_base + offs, mask=m, other=0.0).to(ACC)
        dot += a * b
        sa += a * a
        sb += b * b
    na = norm(sa, ACC)
    nb = norm(sb, ACC)
    cos = tl.sum(dot, axis=0) / (tl.maximum(na, EPS) * tl.maximum(nb, EPS))
    tl.store(cos_ptr + p, cos)
    tl.store(na_ptr + p, na)
    tl.store(nb_ptr + p, nb)


@triton.jit
def _cosine_bwd_kernel(
    h_ptr, dh_ptr, pred_ptr, tgt_ptr, cos_ptr, na_ptr, nb_ptr, grad_ptr,
    rows_ptr, entry_ptr, seg_end_ptr, P, D, stride_h, stride_dh,
    EPS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0)
    row, first, end = segment_start(rows_ptr, seg_end_ptr, i)
    if first:  # only a segment's first program works
        s = -tl.load(grad_ptr).to(ACC) / P

        # sum over the segment of cos / (max(n_self, EPS) * n_self), 0 where n_self < EPS
        self_coef = tl.load(cos_ptr).to(ACC) * 0.0
        for j in range(i, end):
            e = tl.load(entry_ptr + j)
            side = e >= P
            pair = tl.where(side, e - P, e)
            n_self = tl.where(side, tl.load(nb_ptr + pair), tl.load(na_ptr + pair))
            c = tl.load(cos_ptr + pair) / (tl.maximum(n_self, EPS) * tl.maximum(n_self, EPS))
            self_coef += tl.where(n_self >= EPS, c, 0.0)

        x_base = h_ptr + row * stride_h
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            m = offs < D
            acc = -self_coef * tl.load(x_base + offs, mask=m, other=0.0).to(ACC)
            for j in range(i, end):
                e = tl.load(entry_ptr + j)
                side = e >= P
                pair = tl.where(side, e - P, e)
                other = tl.where(side, tl.load(pred_ptr + pair), tl.load(tgt_ptr + pair))
                inv = 1.0 / (tl.maximum(tl.load(na_ptr + pair), EPS) * tl.maximum(tl.load(nb_ptr + pair), EPS))
                y = tl.load(h_ptr + other * stride_h + offs, mask=m, other=0.0).to(ACC)
                acc += inv * y
            tl.store(dh_ptr + row * stride_dh + offs, (s * acc).to(dh_ptr.dtype.element_ty), mask=m)


def cosine_forward(hidden, pred_index, target_index):
    """Per-pair ``(cos, |a|, |b|)`` as ``[P]`` tensors in the accumulation dtype."""
    P, D = pred_index.shape[0], hidden.shape[1]
    acc_torch, acc_tl = acc_dtypes(hidden.dtype)
    cos, na, nb = (torch.empty(P, dtype=acc_torch, device=hidden.device) for _ in range(3))
    _cosine_fwd_kernel[(P,)](
        hidden, pred_index, target_index, cos, na, nb, D, hidden.stride(0),
        EPS=EPS, ACC=acc_tl, BLOCK_D=block_d(D, MAX_BLOCK_D), num_warps=4,
    )
    return cos, na, nb


def cosine_backward(hidden, pred_index, target_index, cos, na, nb, grad_loss, stopgrad_target):
    """``d_hidden [N, D]`` in ``hidden``'s dtype for ``loss = 1 - cos.mean()``."""
    P, D = pred_index.shape[0], hidden.shape[1]
    rows = pred_index if stopgrad_target else torch.cat([pred_index, target_index])
    rows_sorted, entry, seg_end = segments(rows)
    d_hidden = torch.zeros_like(hidden)
    _, acc_tl = acc_dtypes(hidden.dtype)
    _cosine_bwd_kernel[(rows.shape[0],)](
        hidden, d_hidden, pred_index, target_index, cos, na, nb, grad_loss.reshape(1).contiguous(),
        rows_sorted, entry, seg_end, P, D, hidden.stride(0), d_hidden.stride(0),
        EPS=EPS, ACC=acc_tl, BLOCK_D=block_d(D, MAX_BLOCK_D), num_warps=4,
    )
    return d_hidden


class FusedCosineLoss(torch.autograd.Function):
    """``(loss, mean_cosine)`` of gathered row pairs; gradient only to ``hidden``."""

    @staticmethod
    def forward(ctx, hidden, pred_index, target_index, stopgrad_target):
        cos, na, nb = cosine_forward(hidden, pred_index, target_index)
        mean_cos = cos.mean()
        loss = 1.0 - mean_cos
        ctx.save_for_backward(hidden, pred_index, target_index, cos, na, nb)
        ctx.stopgrad_target = stopgrad_target
        ctx.mark_non_differentiable(mean_cos)
        return loss, mean_cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_mean_cos):
        hidden, pred_index, target_index, cos, na, nb = ctx.saved_tensors
        d_hidden = cosine_backward(hidden, pred_index, target_index, cos, na, nb, grad_loss, ctx.stopgrad_target)
        return d_hidden, None, None, None


def cosine_loss_triton(hidden, pred_index, target_index, *, stopgrad_target=False):
    """Validated entry for the kernels: contiguous rows, int64 indices on ``hidden``'s device."""
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    pred_index = pred_index.to(device=hidden.device, dtype=torch.int64).contiguous()
    target_index = target_index.to(device=hidden.device, dtype=torch.int64).contiguous()
    if not hidden.is_cuda:  # on CUDA this would sync; the layout guarantees the range there
        n = hidden.shape[0]
        for name, idx in (("pred_index", pred_index), ("target_index", target_index)):
            if idx.min() < 0 or idx.max() >= n:
                raise IndexError(f"{name} out of range for hidden with {n} rows")
    return FusedCosineLoss.apply(hidden, pred_index, target_index, bool(stopgrad_target))
