"""SIGReg: LeJEPA's anti-collapse regularizer (Balestriero & LeCun, arXiv 2511.08544).

SIGReg (Sketched Isotropic Gaussian Regularization) pushes a batch of embeddings
``x [N, D]`` towards an isotropic Gaussian by testing 1-D projections of it::

    A  = K random unit directions [D, K]            seeded by (seed, step): the same on every rank
    z  = x @ A                                      [N, K]
    C_k(t) = 1/N sum_i cos(t z_ik)                  the empirical characteristic function
    S_k(t) = 1/N sum_i sin(t z_ik)                  phi_k(t) = C_k(t) + i S_k(t)
    EP_k = N * integral_{-tmax}^{tmax} |phi_k(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt
    SIGReg = mean_k EP_k

``EP_k`` is the Epps–Pulley statistic of projection k against N(0, 1), with LeJEPA's weight
``w(t) = exp(-t^2/2)`` and its scaling by the sample count N (a Gaussian sample gives about
1.06 whatever N; a collapsed one grows like N, so each sample's gradient is O(1)). The
integrand is even in t, so the quadrature is the trapezoid rule on ``num_points`` points of
``[0, tmax]`` with doubled weights (LeJEPA's defaults: 17 points, tmax = 3).

**Data parallel.** The statistic depends on the samples only through the sums
``(sum cos, sum sin, N)``. Each rank computes its local sums and they are all-reduced (SUM)
with a *differentiable* all-reduce whose backward all-reduces the incoming gradients; every
rank then holds the same statistic of the global batch. Each rank adds ``weight * SIGReg`` to
its loss; the backward all-reduce gives rank r ``world_size * dSIGReg/dx`` for its own rows,
and DeepSpeed's average over ranks divides that back: value and gradient are those of the
global batch, however it is split over ranks (tested: 1 rank x 4 samples == 4 x 1, and two
real gloo ranks). It is a collective: every rank must call it at every micro-step, also with
zero local samples (an empty ``x``), and every rank must backpropagate through it.

**Gradient accumulation.** The statistic is computed per micro-step (over the micro-batch of
all ranks) and DeepSpeed averages the micro-steps, so with ``grad_accum > 1`` the regularizer
is the mean of per-micro-step statistics, not the statistic of the whole optimizer-step batch
(it is nonlinear in the sums). An exact scheme exists but costs an extra forward: a no-grad
pass over all micro-batches to get the global sums, then per micro-step the surrogate
``<dSIGReg/dsums (global, detached), local sums>`` whose gradient is exact. Not implemented.

Where it acts (``jepa_sigreg``): ``on="both"`` (mean of SIGReg on the Pred and on the
Enc(target) read-outs, each its own sample), ``"pred"`` or ``"target"`` only, optionally
after a small learned projection ``head`` (:class:`ProjectionHead`) so that the constraint
binds a projection of the hidden state rather than the vector the LM head reads.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from megajepa.layout import to_device

WHERE = ("both", "pred", "target")


class _AllReduceSum(torch.autograd.Function):
    """SUM over ranks whose backward is again a SUM over ranks (the transpose of the map
    "every rank receives the sum")."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (SUM) over the default group; the identity in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _AllReduceSum.apply(tensor)
    return tensor


def directions(dim: int, num_slices: int, step: int, *, seed: int = 0, device=None,
               dtype=torch.float32) -> torch.Tensor:
    """``[dim, num_slices]`` unit columns drawn from a CPU generator seeded by (seed, step):
    identical on every rank and every device without communication."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))
    a = torch.randn(dim, num_slices, generator=g, dtype=torch.float64)
    a = (a / a.norm(dim=0, keepdim=True)).to(dtype)
    return a if device is None else to_device(a, device)


def quadrature(num_points: int = 17, t_max: float = 3.0, *, device=None, dtype=torch.float32):
    """``(t, phi, weights)`` on ``[0, t_max]``: N(0, 1)'s characteristic function
    ``phi = exp(-t^2/2)`` and trapezoid weights, doubled for the negative half and multiplied
    by the integration weight ``exp(-t^2/2)``."""
    if num_points < 2 or t_max <= 0:
        raise ValueError(f"SIGReg quadrature needs num_points >= 2 and t_max > 0, got "
                         f"{num_points}, {t_max}")
    t = torch.linspace(0.0, t_max, num_points, dtype=torch.float64)
    dt = t_max / (num_points - 1)
    w = torch.full((num_points,), 2.0 * dt, dtype=torch.float64)
    w[0] = w[-1] = dt        # trapezoid ends; t = 0 counted once, as it should be
    phi = torch.exp(-0.5 * t * t)
    out = (v.to(dtype) for v in (t, phi, w * phi))
    return tuple(out) if device is None else tuple(to_device(v, device) for v in out)


def local_sums(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Flat ``[sum cos (K*T), sum sin (K*T), N]`` of this rank's samples ``x [N, D]``."""
    zt = (x.to(a.dtype) @ a).unsqueeze(-1) * t          # [N, K, T]
    count = torch.full((1,), float(x.shape[0]), dtype=a.dtype, device=a.device)
    return torch.cat([zt.cos().sum(0).flatten(), zt.sin().sum(0).flatten(), count])


def statistic(sums: torch.Tensor, phi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over directions of the Epps–Pulley statistic, from (global) sums."""
    n = sums[-1]
    half = (sums.numel() - 1) // 2
    cos = sums[:half].view(-1, phi.numel())
    sin = sums[half:-1].view(-1, phi.numel())
    m = n.clamp_min(1.0)                                   # N = 0 (no samples anywhere) gives 0
    err = (cos / m - phi).square() + (sin / m).square()    # |ecf - phi|^2, [K, T]
    return (n * (err @ weights)).mean()


def sigreg(x: torch.Tensor, *, step: int, num_slices: int = 256, num_points: int = 17,
           t_max: float = 3.0, seed: int = 0, reduce: Callable | None = None,
           dtype=torch.float32) -> torch.Tensor:
    """SIGReg of the global batch whose local part is ``x [N, D]`` (a collective when
    distributed). ``reduce`` maps the local sums to the global ones (default
    :func:`all_reduce_sum`; tests pass their own to simulate ranks)."""
    return _sigreg_many([x], step=step, num_slices=num_slices, num_points=num_points,
                        t_max=t_max, seed=seed, reduce=reduce, dtype=dtype)


def _sigreg_many(xs, *, step, num_slices, num_points, t_max, seed, reduce, dtype):
    """Mean of the SIGReg of each sample in ``xs`` (same directions), one reduce call."""
    dim = xs[0].shape[-1]
    device = xs[0].device
    a = directions(dim, num_slices, step, seed=seed, device=device, dtype=dtype)
    t, phi, w = quadrature(num_points, t_max, device=device, dtype=dtype)
    sums = torch.stack([local_sums(x, a, t) for x in xs])
    sums = (reduce or all_reduce_sum)(sums)
    return torch.stack([statistic(s, phi, w) for s in sums]).mean()


class ProjectionHead(nn.Module):
    """A small learned map in front of SIGReg: ``Linear(D, hidden) -> GELU -> Linear(hidden,
    out)`` (``hidden = 0``: one linear layer). Its parameters belong to the trained module."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 0):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"projection head needs out_dim >= 1, got {out_dim}")
        self.net = (nn.Linear(dim, out_dim) if not hidden else
                    nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)))

    def forward(self, x):
        return self.net(x)


def jepa_sigreg(hidden_flat: torch.Tensor, pred_index: torch.Tensor, target_index: torch.Tensor,
                *, step: int, on: str = "both", head: nn.Module | None = None,
                num_slices: int = 256, num_points: int = 17, t_max: float = 3.0, seed: int = 0,
                reduce: Callable | None = None, dtype=torch.float32) -> torch.Tensor:
    """SIGReg on the JEPA read-outs of a packed batch (rows of ``hidden_flat`` given by the
    batch's ``pred_index`` / ``target_index``): ``on`` = both | pred | target; ``head``
    applied first if given. Returns a scalar (the same on every rank)."""
    if on not in WHERE:
        raise ValueError(f"SIGReg 'on' must be one of {WHERE}, got {on!r}")
    xs = []
    if on in ("both", "pred"):
        xs.append(hidden_flat.index_select(0, pred_index))
    if on in ("both", "target"):
        xs.append(hidden_flat.index_select(0, target_index))
    if head is not None:
        xs = [head(x.to(next(head.parameters()).dtype)) for x in xs]
    return _sigreg_many(xs, step=step, num_slices=num_slices, num_points=num_points,
                        t_max=t_max, seed=seed, reduce=reduce, dtype=dtype)
