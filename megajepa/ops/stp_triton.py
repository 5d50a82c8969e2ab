"""Triton kernels behind :func:`megajepa.ops.stp.fused_stp_loss`.

Imports triton at module import; :mod:`megajepa.ops.stp` imports this module only when the
Triton path runs. Notation: ``a`` = the rest side (``Pred(rest)``), ``b`` = the span.

Without a predictor the forward is **one kernel**, one program per span ``p``::

    for each BLOCK_D slice:   x[j]  = hidden[index[p, j]]        (K = 6 rows, one [KP, BLOCK_D] tile;
                              b     = sum_j span_coef[p, j] x[j]     rows whose coefs are both 0
                              a     = sum_j rest_coef[p, j] x[j]     are not read)
                              dot += a*b;  sa += a*a;  sb += b*b   (fp32, fp64 for fp64)
    cos[p] = dot / (max(|a|, EPS) * max(|b|, EPS))

then ``loss = sum_p w_p (1 - cos_p) / den`` on ``[P]`` floats. Backward, two kernels: the same
gather recomputes ``a, b`` per slice and writes ``g_a, g_b [P, D]`` (fp32) with
``s_p = -grad * w_p / den``::

    g_a = s_p (b / (max(na,EPS) max(nb,EPS)) - cos_p a / (max(na,EPS) na))    (0 term where na < EPS)

and a **segmented reduction** scatters them into ``d_hidden`` (no atomics, deterministic, as
the cosine kernel): the ``P*K`` entries ``e = p*K + j`` are sorted by the row they write::

    rows    = index.reshape(-1)         sorted: 3 3 3 7 9 9 ...    (stable; seg_end by searchsorted)
    d_hidden[row] = sum_{e in segment} span_coef[e] g_b[p(e)] + rest_coef[e] g_a[p(e)]

one program per entry; only a segment's first program works and writes its row once.

With the linear predictor the path is ``gather kernel (writes a = rest, b = span) -> predictor
(torch matmul, a module call) -> cosine kernel on dense rows``; backward: dense cosine
gradient kernel -> autograd through the matmul -> the same scatter kernel. The gather and
the cosine share one kernel (``GATHER`` constexpr: tube rows or dense rows).

Indices are range-checked on CPU only (on CUDA the check would synchronize; the sampler
guarantees the range).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from megajepa.ops.cosine_eps import EPS
from megajepa.ops.triton_common import acc_dtypes, block_d, norm, segment_start, segments

MAX_BLOCK_D = 512


@triton.jit
def _rows_block(h_ptr, idx_ptr, cs_ptr, cr_ptr, a_ptr, b_ptr, p, offs, m, stride_h, D,
                K: tl.constexpr, KP: tl.constexpr, ACC: tl.constexpr, GATHER: tl.constexpr):
    """One BLOCK_D slice of ``(a, b)`` of span ``p``: gathered from the tube rows, or read."""
    if GATHER:
        kk = tl.arange(0, KP)
        km = kk < K
        rows = tl.load(idx_ptr + p * K + kk, mask=km, other=0)
        cs = tl.load(cs_ptr + p * K + kk, mask=km, other=0.0).to(ACC)
        cr = tl.load(cr_ptr + p * K + kk, mask=km, other=0.0).to(ACC)
        live = km & ((cs != 0.0) | (cr != 0.0))
        x = tl.load(h_ptr + rows[:, None] * stride_h + offs[None, :],
                    mask=live[:, None] & m[None, :], other=0.0).to(ACC)
        a = tl.sum(cr[:, None] * x, axis=0)
        b = tl.sum(cs[:, None] * x, axis=0)
    else:
        a = tl.load(a_ptr + p * D + offs, mask=m, other=0.0).to(ACC)
        b = tl.load(b_ptr + p * D + offs, mask=m, other=0.0).to(ACC)
    return a, b


@triton.jit
def _stp_fwd_kernel(
    h_ptr, idx_ptr, cs_ptr, cr_ptr, a_ptr, b_ptr, cos_ptr, na_ptr, nb_ptr, D, stride_h,
    K: tl.constexpr, KP: tl.constexpr, EPS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
    GATHER: tl.constexpr, WRITE: tl.constexpr, COS: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    dot = tl.zeros([BLOCK_D], dtype=ACC)
    sa = tl.zeros([BLOCK_D], dtype=ACC)
    sb = tl.zeros([BLOCK_D], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        a, b = _rows_block(h_ptr, idx_ptr, cs_ptr, cr_ptr, a_ptr, b_ptr, p, offs, m, stride_h, D,
                           K, KP, ACC, GATHER)
        if WRITE:
            tl.store(a_ptr + p * D + offs, a, mask=m)
            tl.store(b_ptr + p * D + offs, b, mask=m)
        if COS:
            dot += a * b
            sa += a * a
            sb += b * b
    if COS:
        na = norm(sa, ACC)
        nb = norm(sb, ACC)
        tl.store(cos_ptr + p, tl.sum(dot, axis=0) / (tl.maximum(na, EPS) * tl.maximum(nb, EPS)))
        tl.store(na_ptr + p, na)
        tl.store(nb_ptr + p, nb)


@triton.jit
def _stp_grad_kernel(
    h_ptr, idx_ptr, cs_ptr, cr_ptr, a_ptr, b_ptr, cos_ptr, na_ptr, nb_ptr, w_ptr, scale_ptr,
    ga_ptr, gb_ptr, D, stride_h,
    K: tl.constexpr, KP: tl.constexpr, EPS: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
    GATHER: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    s = tl.load(scale_ptr).to(ACC) * tl.load(w_ptr + p).to(ACC)
    cos = tl.load(cos_ptr + p)
    na = tl.load(na_ptr + p)
    nb = tl.load(nb_ptr + p)
    inv = 1.0 / (tl.maximum(na, EPS) * tl.maximum(nb, EPS))
    ca = tl.where(na >= EPS, cos / (tl.maximum(na, EPS) * tl.maximum(na, EPS)), 0.0)
    cb = tl.where(nb >= EPS, cos / (tl.maximum(nb, EPS) * tl.maximum(nb, EPS)), 0.0)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        a, b = _rows_block(h_ptr, idx_ptr, cs_ptr, cr_ptr, a_ptr, b_ptr, p, offs, m, stride_h, D,
                           K, KP, ACC, GATHER)
        tl.store(ga_ptr + p * D + offs, s * (b * inv - ca * a), mask=m)
        tl.store(gb_ptr + p * D + offs, s * (a * inv - cb * b), mask=m)


@triton.jit
def _stp_scatter_kernel(
    ga_ptr, gb_ptr, cs_ptr, cr_ptr, rows_ptr, entry_ptr, seg_end_ptr, dh_ptr, D, stride_dh,
    K: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0)
    row, first, end = segment_start(rows_ptr, seg_end_ptr, i)
    if first:  # only a segment's first program works
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            m = offs < D
            acc = tl.zeros([BLOCK_D], dtype=ACC)
            for j in range(i, end):
                e = tl.load(entry_ptr + j)
                p = e // K
                cs = tl.load(cs_ptr + e).to(ACC)
                cr = tl.load(cr_ptr + e).to(ACC)
                gb = tl.load(gb_ptr + p * D + offs, mask=tl.where(cs != 0.0, m, False), other=0.0).to(ACC)
                ga = tl.load(ga_ptr + p * D + offs, mask=tl.where(cr != 0.0, m, False), other=0.0).to(ACC)
                acc += cs * gb + cr * ga
            tl.store(dh_ptr + row * stride_dh + offs, acc.to(dh_ptr.dtype.element_ty), mask=m)


def _meta(index, D, acc_tl, **flags):
    K = index.shape[1]
    return dict(K=K, KP=max(triton.next_power_of_2(K), 2), ACC=acc_tl, BLOCK_D=block_d(D, MAX_BLOCK_D), num_warps=4, **flags)


def tube_forward(hidden, index, span_coef, rest_coef, *, write: bool, cos: bool):
    """``(rest, span [P, D] or None, cos, |rest|, |span| [P] or None)`` in the accumulation dtype."""
    P, D = index.shape[0], hidden.shape[1]
    acc_torch, acc_tl = acc_dtypes(hidden.dtype)
    dev = hidden.device
    a, b = ((torch.empty(P, D, dtype=acc_torch, device=dev) for _ in range(2)) if write
            else (hidden, hidden))  # unused pointers
    c, na, nb = (torch.empty(P, dtype=acc_torch, device=dev) for _ in range(3))
    _stp_fwd_kernel[(P,)](hidden, index, span_coef, rest_coef, a, b, c, na, nb, D, hidden.stride(0),
                          EPS=EPS, **_meta(index, D, acc_tl, GATHER=True, WRITE=write, COS=cos))
    return (a if write else None), (b if write else None), (c, na, nb) if cos else None


def rows_cosine(a, b):
    """Per-row ``(cos, |a|, |b|)`` of dense ``[P, D]`` tensors (the predictor path)."""
    P, D = a.shape
    acc_torch, acc_tl = acc_dtypes(a.dtype)
    c, na, nb = (torch.empty(P, dtype=acc_torch, device=a.device) for _ in range(3))
    dummy = torch.empty((1, 1), dtype=torch.int64, device=a.device)
    _stp_fwd_kernel[(P,)](a, dummy, dummy, dummy, a, b, c, na, nb, D, D,
                          EPS=EPS, **_meta(dummy, D, acc_tl, GATHER=False, WRITE=False, COS=True))
    return c, na, nb


def cosine_grads(cos, na, nb, weight, scale, *, tube=None, dense=None):
    """``(g_a, g_b) [P, D]`` of ``loss = sum_p w_p (1 - cos_p) / den`` times the incoming
    gradient, with ``scale = grad / den``; ``a, b`` are gathered from
    ``tube = (hidden, index, span_coef, rest_coef)`` or read from ``dense = (a, b)``."""
    if tube is not None:
        hidden, index, cs, cr = tube
        P, D, ref = index.shape[0], hidden.shape[1], hidden
        args = (hidden, index, cs, cr, hidden, hidden)
        stride = hidden.stride(0)
    else:
        a, b = dense
        (P, D), ref = a.shape, a
        index = torch.empty((1, 1), dtype=torch.int64, device=a.device)
        args = (a, index, index, index, a, b)
        stride = D
    acc_torch, acc_tl = acc_dtypes(ref.dtype)
    ga, gb = (torch.empty(P, D, dtype=acc_torch, device=ref.device) for _ in range(2))
    neg = (-scale).reshape(1).to(acc_torch).contiguous()
    _stp_grad_kernel[(P,)](*args, cos, na, nb, weight, neg, ga, gb, D, stride,
                           EPS=EPS, **_meta(index, D, acc_tl, GATHER=tube is not None))
    return ga, gb


def scatter(g_rest, g_span, index, span_coef, rest_coef, like: torch.Tensor):
    """``d_hidden`` (shaped and typed ``like``): each span's gradients into its signed rows."""
    rows_sorted, entry, seg_end = segments(index.reshape(-1))
    d_hidden = torch.zeros_like(like)
    D = like.shape[1]
    _, acc_tl = acc_dtypes(like.dtype)
    _stp_scatter_kernel[(rows_sorted.shape[0],)](
        g_rest.contiguous(), g_span.contiguous(), span_coef, rest_coef, rows_sorted, entry, seg_end,
        d_hidden, D, d_hidden.stride(0), K=index.shape[1], ACC=acc_tl, BLOCK_D=block_d(D, MAX_BLOCK_D), num_warps=4)
    return d_hidden


def _weighted(cos, weight, den):
    return (weight.to(cos.dtype) * (1.0 - cos)).sum() / den


class FusedStpLoss(torch.autograd.Function):
    """No predictor: one gather+diff+cosine kernel forward; gradient only to ``hidden``."""

    @staticmethod
    def forward(ctx, hidden, index, span_coef, rest_coef, weight, den):
        _, _, (cos, na, nb) = tube_forward(hidden, index, span_coef, rest_coef, write=False, cos=True)
        mean_cos = cos.mean()
        ctx.save_for_backward(hidden, index, span_coef, rest_coef, weight, cos, na, nb)
        ctx.den = den
        ctx.mark_non_differentiable(mean_cos)
        return _weighted(cos, weight, den), mean_cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_mean_cos):
        hidden, index, cs, cr, weight, cos, na, nb = ctx.saved_tensors
        ga, gb = cosine_grads(cos, na, nb, weight, grad_loss / ctx.den, tube=(hidden, index, cs, cr))
        return scatter(ga, gb, index, cs, cr, hidden), None, None, None, None, None


class GatherTube(torch.autograd.Function):
    """``(rest, span) [P, D]`` from the signed rows (linear in ``hidden``)."""

    @staticmethod
    def forward(ctx, hidden, index, span_coef, rest_coef):
        rest, span, _ = tube_forward(hidden, index, span_coef, rest_coef, write=True, cos=False)
        ctx.save_for_backward(index, span_coef, rest_coef)
        ctx.like = (hidden.shape, hidden.dtype, hidden.device)
        return rest, span

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rest, g_span):
        index, cs, cr = ctx.saved_tensors
        shape, dtype, device = ctx.like
        zero = torch.zeros(index.shape[0], shape[1], dtype=acc_dtypes(dtype)[0], device=device)
        g_rest = zero if g_rest is None else g_rest.to(zero.dtype)
        g_span = zero if g_span is None else g_span.to(zero.dtype)
        like = torch.empty(shape, dtype=dtype, device=device)
        return scatter(g_rest, g_span, index, cs, cr, like), None, None, None


class RowsCosineLoss(torch.autograd.Function):
    """``sum_p w_p (1 - cos(a_p, b_p)) / den`` of dense rows; gradients to ``a`` and ``b``."""

    @staticmethod
    def forward(ctx, a, b, weight, den):
        cos, na, nb = rows_cosine(a, b)
        mean_cos = cos.mean()
        ctx.save_for_backward(a, b, weight, cos, na, nb)
        ctx.den = den
        ctx.mark_non_differentiable(mean_cos)
        return _weighted(cos, weight, den), mean_cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_mean_cos):
        a, b, weight, cos, na, nb = ctx.saved_tensors
        ga, gb = cosine_grads(cos, na, nb, weight, grad_loss / ctx.den, dense=(a, b))
        return ga.to(a.dtype), gb.to(b.dtype), None, None


def stp_loss_triton(hidden, index, span_coef, rest_coef, weight, *, predictor=None, denominator=None):
    """Validated entry: contiguous rows, int64 indices and float32 coefs on ``hidden``'s device.
    ``predictor`` is a callable on ``[P, D]`` rest embeddings (autograd through it)."""
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    dev = hidden.device
    acc = acc_dtypes(hidden.dtype)[0]
    index = index.to(device=dev, dtype=torch.int64).contiguous()
    span_coef, rest_coef = (c.to(device=dev, dtype=torch.float32).contiguous() for c in (span_coef, rest_coef))
    weight = weight.to(device=dev, dtype=acc).contiguous()
    if not hidden.is_cuda and (index.min() < 0 or index.max() >= hidden.shape[0]):
        raise IndexError(f"STP index out of range for hidden with {hidden.shape[0]} rows")
    den = weight.sum() if denominator is None else denominator
    if predictor is None:
        return FusedStpLoss.apply(hidden, index, span_coef, rest_coef, weight, den)
    rest, span = GatherTube.apply(hidden, index, span_coef, rest_coef)
    pred = predictor(rest)
    return RowsCosineLoss.apply(pred.contiguous(), span, weight, den)
