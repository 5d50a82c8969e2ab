"""LM loss head: linear projection + cross-entropy without ``[M, V]`` logits.

Contract (the objective calls :func:`linear_cross_entropy`):

* ``hidden [M, D]`` — only the rows that carry a label; ``weight [V, D]`` — the LM head (under
  ZeRO-3 the caller has gathered it); ``targets [M]`` int64 in ``[0, V)``.
* The logits are what the model's own forward computes after its last norm::

      z = scale * (hidden @ weight.T + bias)          bias: the head's, if it has one
      z = softcap * tanh(z / softcap)                 when softcap is set (Gemma-2/3)

  (``scale``: Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``; ``objective.lm_head``
  reads both from the model.)
* Returns the **sum** of the ``M`` token cross-entropies, an fp32 0-dim tensor (fp64 for fp64
  inputs), differentiable w.r.t. ``hidden``, ``weight`` and ``bias``. ``M == 0`` returns 0
  with a grad path to them.
* ``impl``: "auto" (liger-kernel's fused linear cross-entropy on CUDA when importable and able
  to apply the head, else "chunked"), "liger" (refused in one line, naming ``owner`` and the
  setting, when the installed liger-kernel cannot apply a bias or soft cap), "chunked",
  "reference" (full logits + ``F.cross_entropy``; tests only).
* "chunked" is one autograd function that, in forward, walks ``chunk_size`` rows at a time:
  logits of the chunk, fp32 log-sum-exp, loss, and the chunk's ``grad_hidden`` rows and its
  contribution to ``grad_weight`` (accumulated in fp32). Backward only scales the stored
  gradients by the incoming scalar. Transient memory is ``O(chunk_size * V)`` (twice that
  with a soft cap) plus the gradients themselves; autograd saves no logits.

Tests (``tests/test_ops_linear_ce.py``): forward and all gradients equal the full-logits
reference for several chunk sizes (chunk > M, M not divisible by chunk), fp32 and bf16, with
and without bias, scale and soft cap; no tensor of ``M * V`` elements is allocated or saved
by the chunked path.
"""
from __future__ import annotations

import importlib.util
import inspect

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


def transform_logits(logits, scale: float = 1.0, softcap: float | None = None):
    """``softcap * tanh(scale * logits / softcap)`` (no cap: ``scale * logits``), out of place."""
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def linear_cross_entropy_reference(hidden, weight, targets, bias=None, scale=1.0, softcap=None):
    """Full ``[M, V]`` logits then ``F.cross_entropy(reduction="sum")`` in fp32: the oracle."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = transform_logits(logits.to(_loss_dtype(hidden)), scale, softcap)
    return F.cross_entropy(logits, targets, reduction="sum")


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of the transformed ``hidden @ weight.T + bias`` (module doc);
    gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, scale, softcap):
        acc = _loss_dtype(hidden)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        w = weight.to(hidden.dtype)  # no copy in the usual case (same dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            t = targets[start : start + chunk_size]
            logits = (h @ w.t()).to(acc)  # [C, V], the vocabulary-sized buffer
            if bias is not None:
                logits += bias.to(acc)
            if scale != 1.0:
                logits.mul_(scale)
            tanh = None
            if softcap is not None:  # keep tanh for its derivative; the capped logits are new
                tanh = logits.div_(softcap).tanh_()
                logits = tanh * softcap
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_h or need_w or need_b):
                continue
            # d loss / d logits = softmax - onehot, in place over the logits buffer
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if tanh is not None:  # d cap*tanh(u/cap) / du = 1 - tanh^2
                grad_logits.mul_(tanh.square_().neg_().add_(1.0))
            if scale != 1.0:
                grad_logits.mul_(scale)
            if need_b:
                grad_b += grad_logits.sum(0)
            grad_logits = grad_logits.to(hidden.dtype)
            if need_h:
                grad_h[start : start + chunk_size] = grad_logits @ w
            if need_w:
                if grad_w.dtype == h.dtype:
                    grad_w.addmm_(grad_logits.t(), h)
                else:  # low precision matmul, fp32 accumulation across chunks
                    grad_w += grad_logits.t() @ h
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_loss.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_loss).to(ctx.weight_dtype)
        if grad_b is not None:
            grad_b = (grad_b * grad_loss).to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def chunked_linear_cross_entropy(hidden, weight, targets, *, bias=None, scale=1.0, softcap=None,
                                 chunk_size=DEFAULT_CHUNK_SIZE):
    """Pure PyTorch fused linear cross-entropy (any device); peak extra memory ``O(chunk_size * V)``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, int(chunk_size),
                                           float(scale), None if softcap is None else float(softcap))


def liger_available() -> bool:
    """True when liger-kernel can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("liger_kernel") is not None
    except (ImportError, ValueError):
        return False


def _liger_function():
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy


def liger_missing(fn, bias=None, softcap=None) -> list[str]:
    """The head settings ``fn`` (liger's fused linear cross-entropy) takes no argument for."""
    params = inspect.signature(fn).parameters
    wanted = {"bias": bias is not None, "softcap": softcap is not None}
    return [name for name, used in wanted.items() if used and name not in params]


def liger_linear_cross_entropy(hidden, weight, targets, *, bias=None, scale=1.0, softcap=None,
                               owner="the model", fn=None):
    """liger-kernel's fused linear cross-entropy, reduction "sum", fp32 grad accumulation.

    ``scale`` is applied to ``hidden`` and ``bias`` (``scale * (h W^T + b) = (scale h) W^T +
    scale b``); the bias and soft cap go to liger, which applies them in its kernel. ``fn``:
    the function to call (default liger's own; CUDA only)."""
    if fn is None:
        if not hidden.is_cuda:
            raise ValueError("impl='liger' needs CUDA tensors; use impl='chunked' on CPU")
        fn = _liger_function()
    missing = liger_missing(fn, bias, softcap)
    if missing:
        raise ValueError(f"{owner}: the installed liger-kernel's fused linear cross-entropy cannot "
                         f"apply the head's {' and '.join(missing)}; use jepa.kernels reference or "
                         "a newer liger-kernel")
    if scale != 1.0:
        hidden = hidden * scale
        bias = bias * scale if bias is not None else None
    extra = {"bias": bias} if bias is not None else {}
    if softcap is not None:
        extra["softcap"] = float(softcap)
    loss = fn(hidden.contiguous(), weight, targets.contiguous(), reduction="sum",
              accum_dtype=torch.float32, **extra)
    return loss.to(_loss_dtype(hidden))


def _liger_can(bias, softcap) -> bool:
    return not (bias is not None or softcap is not None) or not liger_missing(_liger_function(), bias, softcap)


def linear_cross_entropy(hidden, weight, targets, *, bias=None, scale=1.0, softcap=None,
                         chunk_size=DEFAULT_CHUNK_SIZE, impl="auto", owner="the model"):
    """Sum of token cross-entropies of the head's logits against ``targets`` (see module doc)."""
    _check(hidden, weight, targets)
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive, got {softcap}")
    if hidden.shape[0] == 0:
        zero = hidden.reshape(-1)[:0].sum() + weight.reshape(-1)[:0].sum()
        if bias is not None:
            zero = zero + bias[:0].sum()
        return zero.to(_loss_dtype(hidden))
    if impl == "auto":
        fused = hidden.is_cuda and liger_available() and _liger_can(bias, softcap)
        impl = "liger" if fused else "chunked"
    head = dict(bias=bias, scale=scale, softcap=softcap)
    if impl == "liger":
        return liger_linear_cross_entropy(hidden, weight, targets, owner=owner, **head)
    if impl == "chunked":
        return chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size, **head)
    if impl == "reference":
        return linear_cross_entropy_reference(hidden, weight, targets, **head)
    raise ValueError(f"unknown linear_cross_entropy impl {impl!r}: expected 'auto', 'liger', 'chunked' or 'reference'")
