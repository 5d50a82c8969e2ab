"""LM loss head: linear projection + cross-entropy without ``[M, V]`` logits.

Contract (the objective calls :func:`linear_cross_entropy`):

* ``hidden [M, D]`` — only the rows that carry a label; ``weight [V, D]`` — the LM head (under
  ZeRO-3 the caller has gathered it); ``targets [M]`` int64 in ``[0, V)``.
* Returns the **sum** of the ``M`` token cross-entropies, an fp32 0-dim tensor (fp64 for fp64
  inputs), differentiable w.r.t. ``hidden`` and ``weight``. ``M == 0`` returns 0 with a grad
  path to both.
* ``impl``: "auto" (liger-kernel's fused linear cross-entropy on CUDA when importable, else
  "chunked"), "liger", "chunked", "reference" (full logits + ``F.cross_entropy``; tests only).
* "chunked" is one autograd function that, in forward, walks ``chunk_size`` rows at a time:
  logits of the chunk, fp32 log-sum-exp, loss, and the chunk's ``grad_hidden`` rows and its
  contribution to ``grad_weight`` (accumulated in fp32). Backward only scales the stored
  gradients by the incoming scalar. Transient memory is ``O(chunk_size * V)`` plus the
  gradients themselves; autograd saves no logits.

Tests (``tests/test_ops_linear_ce.py``): forward and both gradients equal the full-logits
reference for several chunk sizes (chunk > M, M not divisible by chunk), fp32 and bf16; no
tensor of ``M * V`` elements is allocated or saved by the chunked path.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 4096


def _loss_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _check(hidden, weight, targets):
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [M, D] and weight [V, D], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [M] = [{hidden.shape[0]}], got {tuple(targets.shape)}")


def linear_cross_entropy_reference(hidden, weight, targets):
    """Full ``[M, V]`` logits then ``F.cross_entropy(reduction="sum")`` in fp32: the oracle."""
    logits = (hidden @ weight.t()).to(_loss_dtype(hidden))
    return F.cross_entropy(logits, targets, reduction="sum")


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of ``hidden @ weight.T``; gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        acc = _loss_dtype(hidden)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        w = weight.to(hidden.dtype)  # no copy in the usual case (same dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            t = targets[start : start + chunk_size]
            logits = (h @ w.t()).to(acc)  # [C, V], the only vocabulary-sized buffer
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_h or need_w):
                continue
            # d loss / d logits = softmax - onehot, in place over the logits buffer
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad_logits = grad_logits.to(hidden.dtype)
            if need_h:
                grad_h[start : start + chunk_size] = grad_logits @ w
            if need_w:
                if grad_w.dtype == h.dtype:
                    grad_w.addmm_(grad_logits.t(), h)
                else:  # low precision matmul, fp32 accumulation across chunks
                    grad_w += grad_logits.t() @ h
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_loss.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def chunked_linear_cross_entropy(hidden, weight, targets, *, chunk_size=DEFAULT_CHUNK_SIZE):
    """Pure PyTorch fused linear cross-entropy (any device); peak extra memory ``O(chunk_size * V)``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, int(chunk_size))


def liger_available() -> bool:
    """True when liger-kernel can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("liger_kernel") is not None
    except (ImportError, ValueError):
        return False


def liger_linear_cross_entropy(hidden, weight, targets):
    """liger-kernel's fused linear cross-entropy (CUDA only), reduction "sum", fp32 grad accumulation."""
    if not hidden.is_cuda:
        raise ValueError("impl='liger' needs CUDA tensors; use impl='chunked' on CPU")
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    loss = liger_fused_linear_cross_entropy(
        hidden.contiguous(), weight, targets.contiguous(), reduction="sum", accum_dtype=torch.float32
    )
    return loss.to(_loss_dtype(hidden))


def linear_cross_entropy(hidden, weight, targets, *, chunk_size=DEFAULT_CHUNK_SIZE, impl="auto"):
    """Sum of token cross-entropies of ``hidden @ weight.T`` against ``targets`` (see module doc)."""
    _check(hidden, weight, targets)
    if hidden.shape[0] == 0:
        zero = hidden.reshape(-1)[:0].sum() + weight.reshape(-1)[:0].sum()
        return zero.to(_loss_dtype(hidden))
    if impl == "auto":
        impl = "liger" if hidden.is_cuda and liger_available() else "chunked"
    if impl == "liger":
        return liger_linear_cross_entropy(hidden, weight, targets)
    if impl == "chunked":
        return chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    if impl == "reference":
        return linear_cross_entropy_reference(hidden, weight, targets)
    raise ValueError(f"unknown linear_cross_entropy impl {impl!r}: expected 'auto', 'liger', 'chunked' or 'reference'")
