"""JEPA cosine loss: gather pred/target rows of the hidden states, ``mean(1 - cos)``.

Contract (the objective calls :func:`cosine_loss`):

* ``hidden [N, D]`` any float dtype, ``pred_index`` / ``target_index`` ``[P]`` int64 flat row
  indices into ``hidden``. Targets may repeat; a row may be both a pred and a target.
* Returns ``(loss, mean_cosine)``: ``loss = mean_p (1 - cos(hidden[pred[p]], hidden[target[p]]))``,
  an fp32 0-dim tensor (fp64 when ``hidden`` is fp64, for gradcheck) with autograd to
  ``hidden``; ``mean_cosine`` is the detached mean cosine, same dtype.
* Cosine with epsilon, the one definition both implementations share::

      cos(a, b) = <a, b> / (max(|a|, EPS) * max(|b|, EPS)),   EPS = 1e-8

  (``EPS`` lives in :mod:`megajepa.ops.cosine_eps`, shared with the Triton kernels)
  so a zero row has cosine 0 and finite gradients. The gradient of ``max(|a|, EPS)`` is
  ``a / |a|`` where ``|a| >= EPS`` and 0 below (torch's ``clamp_min`` rule).
* ``stopgrad_target=True``: nothing flows through the target side; a row that is also a pred
  still gets its pred-side gradient.
* ``P == 0``: ``loss == 0`` (still connected to ``hidden``, gradient 0), ``mean_cosine == 0``.

Tests (``tests/test_ops_cosine.py``) check the reference and the Triton kernel (under
``TRITON_INTERPRET=1`` on CPU) against a float64 computation, with gradcheck.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from megajepa.ops.cosine_eps import EPS


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def empty_result(hidden: torch.Tensor):
    """P == 0: a zero loss that still has a grad path to ``hidden`` (reads nothing)."""
    dtype = compute_dtype(hidden)
    loss = hidden.reshape(-1)[:0].to(dtype).sum()
    return loss, torch.zeros((), dtype=dtype, device=hidden.device)


def _check(hidden, pred_index, target_index):
    if hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(f"hidden must be a float [N, D] tensor, got {tuple(hidden.shape)} {hidden.dtype}")
    if pred_index.shape != target_index.shape or pred_index.dim() != 1:
        raise ValueError(
            f"pred_index and target_index must be [P] of equal length, got "
            f"{tuple(pred_index.shape)} and {tuple(target_index.shape)}"
        )


def cosine_loss_reference(hidden, pred_index, target_index, *, stopgrad_target=False):
    """Pure PyTorch oracle and fallback; same signature and result as the Triton path.

    Upcasts all of ``hidden`` to fp32 first (one ``[N, D]`` copy for bf16 inputs) so that
    gradients of repeated rows accumulate in fp32, as in the kernel.
    """
    _check(hidden, pred_index, target_index)
    if pred_index.numel() == 0:
        return empty_result(hidden)
    h = hidden.to(compute_dtype(hidden))
    a = h.index_select(0, pred_index)
    b = h.index_select(0, target_index)
    if stopgrad_target:
        b = b.detach()
    na = torch.linalg.vector_norm(a, dim=-1).clamp_min(EPS)
    nb = torch.linalg.vector_norm(b, dim=-1).clamp_min(EPS)
    cos = (a * b).sum(-1) / (na * nb)
    return (1.0 - cos).mean(), cos.detach().mean()


def triton_available() -> bool:
    """True when triton can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def _use_triton(hidden: torch.Tensor) -> bool:
    if not triton_available():
        return False
    return hidden.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def fused_cosine_loss(hidden, pred_index, target_index, *, stopgrad_target=False):
    """The Triton path: one gather/normalize/dot kernel forward, one scatter kernel backward."""
    _check(hidden, pred_index, target_index)
    if pred_index.numel() == 0:
        return empty_result(hidden)
    from megajepa.ops import cosine_triton  # imports triton; only when this path runs

    return cosine_triton.cosine_loss_triton(hidden, pred_index, target_index, stopgrad_target=stopgrad_target)


def cosine_loss(hidden, pred_index, target_index, *, stopgrad_target=False, impl="auto"):
    """Dispatch: ``impl`` is "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else torch),
    "triton" or "torch"."""
    if impl == "auto":
        impl = "triton" if _use_triton(hidden) else "torch"
    if impl == "triton":
        return fused_cosine_loss(hidden, pred_index, target_index, stopgrad_target=stopgrad_target)
    if impl == "torch":
        return cosine_loss_reference(hidden, pred_index, target_index, stopgrad_target=stopgrad_target)
    raise ValueError(f"unknown cosine_loss impl {impl!r}: expected 'auto', 'triton' or 'torch'")
