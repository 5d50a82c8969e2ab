"""SIGReg against float64 oracles (direct quadrature, closed form), its rank-split
invariance (simulated shards and two real gloo ranks), and its behaviour on Gaussian and
collapsed samples."""
import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from megajepa.sigreg import ProjectionHead, directions, jepa_sigreg, sigreg

F64 = dict(dtype=torch.float64)


def direct(x: np.ndarray, a: np.ndarray, t_max: float, num_points: int) -> float:
    """Mean over directions of N * trapezoid over the *symmetric* grid [-t_max, t_max] of
    |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2), with complex exponentials (float64)."""
    t = np.linspace(-t_max, t_max, 2 * num_points - 1)
    z = x @ a                                              # [N, K]
    ecf = np.exp(1j * z[:, :, None] * t).mean(0)           # [K, T]
    f = np.abs(ecf - np.exp(-t ** 2 / 2)) ** 2 * np.exp(-t ** 2 / 2)
    dt = t[1] - t[0]
    integral = dt * (f.sum(1) - 0.5 * (f[:, 0] + f[:, -1]))
    return float((len(x) * integral).mean())


def closed_form(x: np.ndarray, a: np.ndarray) -> float:
    """The integral over the whole real line, in closed form (Gaussian integrals)."""
    z = x @ a
    n = len(z)
    out = []
    for k in range(z.shape[1]):
        d = z[:, k, None] - z[None, :, k]
        val = (math.sqrt(2 * math.pi) * np.exp(-d ** 2 / 2).sum() / n ** 2
               - 2 * math.sqrt(math.pi) * np.exp(-z[:, k] ** 2 / 4).mean()
               + math.sqrt(2 * math.pi / 3))
        out.append(n * val)
    return float(np.mean(out))


def test_matches_direct_float64_quadrature():
    x = torch.randn(37, 6, generator=torch.Generator().manual_seed(0), **F64) * 1.3 + 0.2
    got = sigreg(x, step=5, num_slices=11, num_points=17, t_max=3.0, **F64).item()
    a = directions(6, 11, 5, **F64).numpy()
    assert abs(got - direct(x.numpy(), a, 3.0, 17)) < 1e-10


def test_fine_quadrature_equals_closed_form():
    x = torch.randn(25, 4, generator=torch.Generator().manual_seed(1), **F64)
    got = sigreg(x, step=0, num_slices=5, num_points=4001, t_max=14.0, **F64).item()
    want = closed_form(x.numpy(), directions(4, 5, 0, **F64).numpy())
    assert abs(got - want) < 1e-6 * max(1.0, abs(want))


def test_gaussian_is_small_and_collapse_is_large():
    g = torch.Generator().manual_seed(2)
    gauss = torch.randn(512, 16, generator=g)
    # E[N |ecf - phi|^2] = 1 - exp(-t^2): about 1.06 after integration, whatever N.
    assert sigreg(gauss, step=0).item() < 2.0
    one = torch.randn(1, 16, generator=g).expand(512, 16)
    assert sigreg(one, step=0).item() > 100.0
    narrow = gauss * 0.05                                  # not collapsed, but far from N(0, I)
    assert sigreg(narrow, step=0).item() > 20 * sigreg(gauss, step=0).item()


def test_directions_are_unit_seeded_by_step():
    a, b, c = directions(8, 4, 3), directions(8, 4, 3), directions(8, 4, 4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(4))
    assert not torch.allclose(directions(8, 4, 3, seed=1), a)


def _shard_reducers(shards):
    """For each simulated rank r, a reducer returning its local sums plus every other
    shard's sums (built with graph), i.e. what a SUM all-reduce delivers on rank r."""
    from megajepa.sigreg import local_sums, quadrature
    a = directions(shards[0].shape[1], 7, 3, **F64)
    t, _, _ = quadrature(17, 3.0, **F64)
    sums = [local_sums(s, a, t) for s in shards]
    return [lambda local, r=r: local + sum(s for q, s in enumerate(sums) if q != r).unsqueeze(0)
            for r in range(len(shards))]


def test_one_rank_of_four_equals_four_ranks_of_one():
    """Value and gradient of the global statistic do not depend on the split. Simulated
    data parallel: each rank adds the statistic to its loss and gradients are averaged."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), **F64)
    full = x.clone().requires_grad_(True)
    v1 = sigreg(full, step=3, num_slices=7, **F64)
    v1.backward()
    parts = [x[i:i + 1].clone().requires_grad_(True) for i in range(4)]
    reducers = _shard_reducers(parts)
    values = [sigreg(p, step=3, num_slices=7, reduce=red, **F64) for p, red in zip(parts, reducers)]
    for v in values:
        torch.testing.assert_close(v, v1, atol=1e-12, rtol=1e-12)
    (sum(values) / len(values)).backward()                 # DeepSpeed's mean over ranks
    torch.testing.assert_close(torch.cat([p.grad for p in parts]), full.grad, atol=1e-12, rtol=1e-10)


def _rank_worker(rank, world, init, x, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rows = [1] if rank == 1 else [0, 2, 3, 4]          # uneven shards: 4 rows and 1 row
        part = x[rows].clone().requires_grad_(True)
        v = sigreg(part, step=9, num_slices=6, **F64)
        v.backward()
        torch.save({"value": v.detach(), "grad": part.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), **F64)
    mp.spawn(_rank_worker, args=(2, f"file://{tmp_path}/rdzv", x, str(tmp_path / "out")),
             nprocs=2, join=True)
    full = x.clone().requires_grad_(True)
    v = sigreg(full, step=9, num_slices=6, **F64)
    v.backward()
    r0, r1 = (torch.load(tmp_path / f"out.{r}") for r in (0, 1))
    torch.testing.assert_close(r0["value"], v.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(r1["value"], v.detach(), atol=1e-12, rtol=1e-12)
    # Each rank's gradient is world_size x its rows' share; DeepSpeed averages over ranks.
    got = torch.cat([r0["grad"][:1], r1["grad"], r0["grad"][1:]]) / 2
    torch.testing.assert_close(got, full.grad, atol=1e-12, rtol=1e-10)


def test_jepa_sigreg_where_and_head():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(20, 8, generator=g, **F64)
    pi, ti = torch.tensor([0, 3, 5, 7]), torch.tensor([1, 2, 9, 11])
    kw = dict(step=2, num_slices=5, **F64)
    p = sigreg(hidden[pi], **kw)
    t = sigreg(hidden[ti], **kw)
    torch.testing.assert_close(jepa_sigreg(hidden, pi, ti, on="pred", **kw), p)
    torch.testing.assert_close(jepa_sigreg(hidden, pi, ti, on="target", **kw), t)
    torch.testing.assert_close(jepa_sigreg(hidden, pi, ti, on="both", **kw), (p + t) / 2)
    head = ProjectionHead(8, 3, hidden=4).double()
    with torch.no_grad():
        want = sigreg(head(hidden[pi]), **kw)
    torch.testing.assert_close(jepa_sigreg(hidden, pi, ti, on="pred", head=head, **kw).detach(), want)
    with pytest.raises(ValueError, match="both, pred, target|'both', 'pred', 'target'"):
        jepa_sigreg(hidden, pi, ti, on="text", **kw)


def test_no_samples_is_zero_and_differentiable():
    x = torch.zeros(0, 4, requires_grad=True)
    v = sigreg(x, step=0)
    assert v.item() == 0.0
    v.backward()
    assert x.grad.shape == (0, 4)


def test_gradient_step_moves_a_collapsed_sample_apart():
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(1, 8, generator=g).expand(64, 8) + 1e-3 * torch.randn(64, 8, generator=g))
    x = x.clone().requires_grad_(True)
    before = sigreg(x, step=0)
    before.backward()
    with torch.no_grad():
        y = x - 0.05 * x.grad
    assert sigreg(y, step=0).item() < before.item()
    assert torch.pdist(y).mean() > torch.pdist(x.detach()).mean()
