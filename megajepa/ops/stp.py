"""STP loss: signed row gathers into span and rest embeddings, weighted ``1 - cos``.

Contract (the objective calls :func:`stp_loss`; ``megajepa.stp`` builds the indices)::

    span[p] = sum_j span_coef[p, j] * hidden[index[p, j]]          index, coefs: [P, K]
    rest[p] = sum_j rest_coef[p, j] * hidden[index[p, j]]
    pred[p] = predictor(rest[p])            (identity when predictor is None)
    loss    = sum_p weight[p] * (1 - cos(pred[p], span[p])) / denominator

* ``hidden [N, D]`` any float dtype; ``index`` int64 flat rows (they repeat across spans);
  ``span_coef``/``rest_coef`` float; ``weight [P]`` float. ``denominator`` defaults to
  ``weight.sum()`` (the reference's ``1 - sum(w cos) / sum(w)``); a training loop passes the
  global weight sum so the gradient does not depend on how a batch is split.
* Returns ``(loss, mean_cosine)``: fp32 0-dim (fp64 for fp64 ``hidden``, for gradcheck) with
  autograd to ``hidden`` and the predictor's parameters; ``mean_cosine`` is the detached
  unweighted mean over spans.
* ``cos`` is the cosine kernel's definition, ``<a, b> / (max(|a|, EPS) * max(|b|, EPS))``.
* The predictor runs as a module call (so ZeRO-3 gathers its weight) in its own dtype;
  the embeddings are cast to it and the result back to the accumulation dtype.
* ``P == 0``: ``loss == 0`` (connected to ``hidden``), ``mean_cosine == 0``.

Implementations: :func:`stp_loss_reference` (eager PyTorch, the oracle and fallback) and the
Triton path in :mod:`megajepa.ops.stp_triton` (on CUDA, or on CPU under ``TRITON_INTERPRET=1``).
Tests: ``tests/test_ops_stp.py``.
"""
from __future__ import annotations

import torch

from megajepa.ops.cosine import _use_triton, compute_dtype, empty_result
from megajepa.ops.cosine_eps import EPS

IMPLS = ("auto", "triton", "torch")


def check(hidden, index, span_coef, rest_coef, weight):
    if hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(f"hidden must be a float [N, D] tensor, got {tuple(hidden.shape)} {hidden.dtype}")
    if index.dim() != 2 or span_coef.shape != index.shape or rest_coef.shape != index.shape:
        raise ValueError(f"index, span_coef and rest_coef must be [P, K] of one shape, got "
                         f"{tuple(index.shape)}, {tuple(span_coef.shape)}, {tuple(rest_coef.shape)}")
    if weight.shape != index.shape[:1]:
        raise ValueError(f"weight must be [P] with P = {index.shape[0]}, got {tuple(weight.shape)}")


def apply_predictor(predictor, rest: torch.Tensor) -> torch.Tensor:
    """``predictor(rest)`` in the predictor's dtype, returned in ``rest``'s dtype."""
    param = next(predictor.parameters(), None)
    dtype = rest.dtype if param is None else param.dtype
    return predictor(rest.to(dtype)).to(rest.dtype)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    na = torch.linalg.vector_norm(a, dim=-1).clamp_min(EPS)
    nb = torch.linalg.vector_norm(b, dim=-1).clamp_min(EPS)
    return (a * b).sum(-1) / (na * nb)


def stp_loss_reference(hidden, index, span_coef, rest_coef, weight, *, predictor=None, denominator=None):
    """Eager PyTorch: gather ``[P, K, D]``, combine (one batched matmul), predict, cosine,
    weighted sum. Upcasts all of ``hidden`` first (fp32 accumulation of repeated rows)."""
    check(hidden, index, span_coef, rest_coef, weight)
    if index.shape[0] == 0:
        return empty_result(hidden)
    dtype = compute_dtype(hidden)
    (P, K), D = index.shape, hidden.shape[1]
    rows = hidden.to(dtype).index_select(0, index.reshape(-1)).view(P, K, D)
    coef = torch.stack([span_coef, rest_coef], dim=1).to(dtype)  # [P, 2, K]
    span, rest = torch.bmm(coef, rows).unbind(1)
    if predictor is not None:
        rest = apply_predictor(predictor, rest)
    cos = cosine(rest, span)
    w = weight.to(dtype)
    den = w.sum() if denominator is None else denominator
    return (w * (1.0 - cos)).sum() / den, cos.detach().mean()


def fused_stp_loss(hidden, index, span_coef, rest_coef, weight, *, predictor=None, denominator=None):
    """The Triton path (see :mod:`megajepa.ops.stp_triton`)."""
    check(hidden, index, span_coef, rest_coef, weight)
    if index.shape[0] == 0:
        return empty_result(hidden)
    from megajepa.ops import stp_triton  # imports triton; only when this path runs

    pred = None if predictor is None else (lambda rest: apply_predictor(predictor, rest))
    return stp_triton.stp_loss_triton(hidden, index, span_coef, rest_coef, weight, predictor=pred,
                                      denominator=denominator)


def stp_loss(hidden, index, span_coef, rest_coef, weight, *, predictor=None, denominator=None, impl="auto"):
    """Dispatch: ``impl`` is "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else torch),
    "triton" or "torch"."""
    if impl not in IMPLS:
        raise ValueError(f"unknown stp_loss impl {impl!r}: expected one of {IMPLS}")
    if impl == "auto":
        impl = "triton" if _use_triton(hidden) else "torch"
    fn = fused_stp_loss if impl == "triton" else stp_loss_reference
    return fn(hidden, index, span_coef, rest_coef, weight, predictor=predictor, denominator=denominator)
