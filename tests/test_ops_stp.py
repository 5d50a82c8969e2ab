"""STP loss: Triton kernels (TRITON_INTERPRET=1 on CPU) and the eager version vs a float64 oracle."""
import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module is imported (triton reads it at @jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megajepa.ops import COSINE_EPS, stp_loss, triton_available  # noqa: E402
from conftest import compile_without_interpreter, nvidia_compiler_available  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not (triton_available() and INTERPRET),
                                       reason="needs triton and TRITON_INTERPRET=1")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
compiled_triton = pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: would test the interpreter")
IMPLS = [pytest.param("triton", marks=needs_interpreter), "torch"]


def oracle(hidden, index, span_coef, rest_coef, weight, weight_matrix, denominator, grad_out):
    """float64 loss, mean cosine, d_hidden (and d_W): the contract written out span by span."""
    h = hidden.detach().double().requires_grad_()
    W = None if weight_matrix is None else weight_matrix.detach().double().requires_grad_()
    total, coss = 0.0, []
    for p in range(index.shape[0]):
        span = sum(float(span_coef[p, j]) * h[int(index[p, j])] for j in range(index.shape[1]))
        rest = sum(float(rest_coef[p, j]) * h[int(index[p, j])] for j in range(index.shape[1]))
        if W is not None:
            rest = W @ rest
        c = (rest @ span) / (rest.norm().clamp_min(COSINE_EPS) * span.norm().clamp_min(COSINE_EPS))
        total = total + float(weight[p]) * (1 - c)
        coss.append(c.detach())
    den = float(weight.double().sum()) if denominator is None else denominator
    loss = total / den
    (loss * grad_out).backward()
    return loss.detach(), torch.stack(coss).mean(), h.grad, None if W is None else W.grad


def make_case(n, d, p, seed):
    """Tube-like signed rows: six distinct rows per span, repeated across spans, unused slots
    (coefs 0), an exactly zero span (two equal rows) and a zero hidden row, so the EPS
    branches run. (Distinct rows: a sum that cancels only up to rounding has no stable cosine.)"""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    hidden[n - 1] = 0
    index = torch.stack([torch.randperm(n - 1, generator=g)[:6] for _ in range(p)])
    span_coef = torch.tensor([0, -1, 1, 0, 1, -1], dtype=torch.float32).repeat(p, 1)
    rest_coef = torch.tensor([-1, 1, -1, 1, 0, 0], dtype=torch.float32).repeat(p, 1)
    span_coef[::2, 4:] = 0  # spans without a gap
    index[0, 2] = index[0, 1]  # span 0: zero span embedding
    span_coef[0, 4:] = 0
    index[1, :] = n - 1  # span 1: every row zero
    weight = torch.rand(p, generator=g) + 0.1
    return hidden, index, span_coef, rest_coef, weight


def run(impl, hidden, index, span_coef, rest_coef, weight, *, dtype, predictor, denominator, grad_out):
    x = hidden.to(dtype).clone().requires_grad_()
    if predictor is not None:
        predictor.zero_grad()
    loss, cos = stp_loss(x, index, span_coef, rest_coef, weight, predictor=predictor,
                         denominator=denominator, impl=impl)
    (loss * grad_out).backward()
    return loss, cos, x.grad, None if predictor is None else predictor.weight.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("use_predictor", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d,p,denominator", [(8, 5, 4, None), (40, 64, 30, 50.0), (25, 100, 9, None)])
def test_matches_float64(n, d, p, denominator, dtype, use_predictor, impl):
    hidden, index, sc, rc, w = make_case(n, d, p, seed=n + d + p)
    pred = None
    if use_predictor:
        pred = torch.nn.Linear(d, d, bias=False)
        torch.nn.init.xavier_uniform_(pred.weight, generator=torch.Generator().manual_seed(1))
    ref = oracle(hidden.to(dtype), index, sc, rc, w, None if pred is None else pred.weight, denominator, 1.7)
    loss, cos, grad, gw = run(impl, hidden, index, sc, rc, w, dtype=dtype, predictor=pred,
                              denominator=denominator, grad_out=1.7)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cos.double(), ref[1], rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-3)
    torch.testing.assert_close(grad.double(), ref[2], **tol)
    if pred is not None:
        torch.testing.assert_close(gw.double(), ref[3], rtol=1e-4, atol=1e-6)


@needs_interpreter
@pytest.mark.parametrize("use_predictor", [False, True])
def test_triton_equals_eager(use_predictor):
    """The two implementations agree to rounding on one case (values and all gradients)."""
    hidden, index, sc, rc, w = make_case(30, 48, 20, seed=3)
    pred = torch.nn.Linear(48, 48, bias=False) if use_predictor else None
    a = run("triton", hidden, index, sc, rc, w, dtype=torch.float32, predictor=pred, denominator=None, grad_out=1.0)
    b = run("torch", hidden, index, sc, rc, w, dtype=torch.float32, predictor=pred, denominator=None, grad_out=1.0)
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_wide_rows_loop_over_blocks(impl):
    hidden, index, sc, rc, w = make_case(12, 1300, 6, seed=4)  # D > the kernels' 512 block
    ref = oracle(hidden, index, sc, rc, w, None, None, 1.0)
    loss, _, grad, _ = run(impl, hidden, index, sc, rc, w, dtype=torch.float32, predictor=None,
                           denominator=None, grad_out=1.0)
    torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("use_predictor", [False, True])
def test_gradcheck_float64(impl, use_predictor):
    hidden, index, sc, rc, w = make_case(8, 4, 4, seed=5)
    hidden[-1] = torch.randn(4)  # away from the EPS kink, where finite differences are meaningful
    index[0, 2] = index[0, 3]
    pred = torch.nn.Linear(4, 4, bias=False, dtype=torch.float64) if use_predictor else None

    def f(h, *params):
        return stp_loss(h, index, sc, rc, w, predictor=pred, impl=impl)[0]

    inputs = (hidden.double().requires_grad_(),) + ((pred.weight,) if pred is not None else ())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_spans(impl):
    h = torch.randn(4, 8, requires_grad=True)
    empty = torch.zeros(0, 6)
    loss, cos = stp_loss(h, empty.long(), empty, empty, torch.zeros(0), impl=impl)
    loss.backward()
    assert loss.item() == 0.0 and cos.item() == 0.0 and torch.equal(h.grad, torch.zeros(4, 8))


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_bad_input(impl):
    h = torch.randn(4, 8)
    idx, c, w = torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6), torch.ones(2)
    with pytest.raises(ValueError, match="one shape"):
        stp_loss(h, idx, c[:, :4], c, w, impl=impl)
    with pytest.raises(ValueError, match="weight must be"):
        stp_loss(h, idx, c, c, w[:1], impl=impl)
    with pytest.raises(ValueError, match="hidden must be"):
        stp_loss(h[0], idx, c, c, w, impl=impl)
    with pytest.raises(ValueError, match="unknown stp_loss impl"):
        stp_loss(h, idx, c, c, w, impl="cuda")


@needs_interpreter
def test_triton_checks_the_index_range():
    h = torch.randn(4, 8)
    idx, c, w = torch.full((2, 6), 4, dtype=torch.long), torch.ones(2, 6), torch.ones(2)
    with pytest.raises(IndexError, match="out of range"):
        stp_loss(h, idx, c, c, w, impl="triton")


@pytest.mark.gpu
@requires_cuda
@compiled_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_predictor", [False, True])
def test_compiled_kernels_on_gpu(dtype, use_predictor):
    hidden, index, sc, rc, w = make_case(4096, 2051, 1024, seed=6)
    pred = torch.nn.Linear(2051, 2051, bias=False) if use_predictor else None
    ref = oracle(hidden.to(dtype), index, sc, rc, w, None if pred is None else pred.weight, None, 1.0)
    x = hidden.to(dtype).cuda().requires_grad_()
    loss, _ = stp_loss(x, index.cuda(), sc.cuda(), rc.cuda(), w.cuda(),
                       predictor=None if pred is None else pred.cuda(), impl="triton")
    loss.backward()
    torch.testing.assert_close(loss.double().cpu(), ref[0], rtol=1e-4, atol=1e-5)
    tol = dict(rtol=1e-3, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-3)
    torch.testing.assert_close(x.grad.double().cpu(), ref[2], **tol)


COMPILE_FOR_HOPPER = """
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from megajepa.ops import COSINE_EPS, stp_triton as st

meta = {"K": 6, "KP": 8, "EPS": COSINE_EPS, "ACC": tl.float32, "BLOCK_D": 512}
c = {k: "constexpr" for k in meta}
tube = {"h_ptr": "*bf16", "idx_ptr": "*i64", "cs_ptr": "*fp32", "cr_ptr": "*fp32", "a_ptr": "*fp32",
        "b_ptr": "*fp32", "cos_ptr": "*fp32", "na_ptr": "*fp32", "nb_ptr": "*fp32"}
cases = []
for gather, write, cos in ((True, False, True), (True, True, False), (False, False, True)):
    flags = {"GATHER": gather, "WRITE": write, "COS": cos}
    sig = {**tube, "D": "i32", "stride_h": "i32", **c, **{k: "constexpr" for k in flags}}
    cases.append((st._stp_fwd_kernel, sig, {**meta, **flags}))
for gather in (True, False):
    sig = {**tube, "w_ptr": "*fp32", "scale_ptr": "*fp32", "ga_ptr": "*fp32", "gb_ptr": "*fp32", "D": "i32",
           "stride_h": "i32", **c, "GATHER": "constexpr"}
    cases.append((st._stp_grad_kernel, sig, {**meta, "GATHER": gather}))
sig = {"ga_ptr": "*fp32", "gb_ptr": "*fp32", "cs_ptr": "*fp32", "cr_ptr": "*fp32", "rows_ptr": "*i64",
       "entry_ptr": "*i64", "seg_end_ptr": "*i64", "dh_ptr": "*bf16", "D": "i32", "stride_dh": "i32",
       "K": "constexpr", "ACC": "constexpr", "BLOCK_D": "constexpr"}
cases.append((st._stp_scatter_kernel, sig, {"K": 6, "ACC": tl.float32, "BLOCK_D": 512}))
for kernel, sig, consts in cases:
    compiled = triton.compile(ASTSource(kernel, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))
    assert "cubin" in compiled.asm
"""


@pytest.mark.skipif(not triton_available(), reason="triton not installed")
@pytest.mark.skipif(not nvidia_compiler_available(), reason="triton without its NVIDIA backend")
def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter accepts code the compiler rejects: compile every kernel variant to sm_90
    cubin, in a fresh process without TRITON_INTERPRET (triton cannot mix both modes)."""
    compile_without_interpreter(COMPILE_FOR_HOPPER)
