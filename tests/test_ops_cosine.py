"""JEPA cosine loss: Triton kernel (TRITON_INTERPRET=1 on CPU) and PyTorch reference vs a float64 oracle."""
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module is imported (triton reads it at @jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megajepa.ops import COSINE_EPS, cosine_loss, triton_available  # noqa: E402
from conftest import compile_without_interpreter, nvidia_compiler_available  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")
# CPU tensors go through the kernel only in the interpreter
needs_interpreter = pytest.mark.skipif(not (triton_available() and INTERPRET),
                                       reason="needs triton and TRITON_INTERPRET=1")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
compiled_triton = pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: would test the interpreter, "
                                     "not the compiled kernel")
IMPLS = [pytest.param("triton", marks=needs_interpreter), "torch"]


def oracle(hidden, pred, tgt, stopgrad, grad_out):
    """float64 loss, mean cosine and d_hidden, written out from the definition, not the reference."""
    h = hidden.detach().double().requires_grad_()
    a, b = h[pred], h[tgt]
    if stopgrad:
        b = b.detach()
    na = a.norm(dim=1).clamp_min(COSINE_EPS)
    nb = b.norm(dim=1).clamp_min(COSINE_EPS)
    cos = (a * b).sum(1) / (na * nb)
    loss = (1 - cos).sum() / len(pred)
    (loss * grad_out).backward()
    return loss.detach(), cos.detach().mean(), h.grad


def make_case(n, d, p, dtype, seed):
    """Random rows with a zero row, repeated targets and a pair whose pred and target coincide."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    hidden[n // 2] = 0
    pred = torch.randint(0, n, (p,), generator=g)
    tgt = torch.randint(0, max(n // 3, 1), (p,), generator=g)  # few distinct targets: repeats
    pred[0], tgt[0] = 1, 1  # pred == target
    pred[1], tgt[2] = n // 2, n // 2  # zero-norm pred and target
    return hidden, pred, tgt


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("stopgrad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d,p", [(5, 7, 6), (33, 64, 40), (20, 100, 9), (9, 257, 12)])
def test_matches_float64(n, d, p, dtype, stopgrad, impl):
    hidden, pred, tgt = make_case(n, d, p, dtype, seed=n * d + p)
    grad_out = 1.7
    ref_loss, ref_cos, ref_grad = oracle(hidden, pred, tgt, stopgrad, grad_out)

    x = hidden.clone().requires_grad_()
    loss, mean_cos = cosine_loss(x, pred, tgt, stopgrad_target=stopgrad, impl=impl)
    (loss * grad_out).backward()

    assert loss.dtype == mean_cos.dtype == torch.float32 and loss.dim() == 0
    assert not mean_cos.requires_grad
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean_cos.double(), ref_cos, rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-3)
    torch.testing.assert_close(x.grad.double(), ref_grad, **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_stopgrad_keeps_pred_side_of_a_shared_row(impl):
    hidden, pred, tgt = make_case(12, 16, 8, torch.float32, seed=3)
    shared = 11
    pred[3], tgt[3], tgt[4] = shared, 0, shared  # row 11: pred of pair 3, target of pair 4
    x = hidden.clone().requires_grad_()
    cosine_loss(x, pred, tgt, stopgrad_target=True, impl=impl)[0].backward()
    only_targets = sorted(set(tgt.tolist()) - set(pred.tolist()))
    assert only_targets and (x.grad[only_targets] == 0).all()
    torch.testing.assert_close(x.grad[shared].double(), oracle(hidden, pred, tgt, True, 1.0)[2][shared])
    assert x.grad[shared].abs().sum() > 0


@needs_interpreter
def test_wide_rows_loop_over_blocks():
    hidden, pred, tgt = make_case(6, 8192, 5, torch.float32, seed=1)
    ref_loss, _, ref_grad = oracle(hidden, pred, tgt, False, 1.0)
    x = hidden.clone().requires_grad_()
    loss, _ = cosine_loss(x, pred, tgt, impl="triton")
    loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_float64(impl):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=g).requires_grad_()
    pred = torch.tensor([0, 1, 2, 3, 4])
    tgt = torch.tensor([5, 5, 2, 6, 5])  # repeats and pred == target; no zero rows (kink)
    # stopgrad_target is not a function of hidden that finite differences can see; the
    # float64 oracle tests cover it
    fn = lambda h: cosine_loss(h, pred, tgt, impl=impl)[0]  # noqa: E731
    assert fn(hidden).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (hidden,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_pairs(impl):
    x = torch.randn(4, 9, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    loss, mean_cos = cosine_loss(x, empty, empty, impl=impl)
    assert loss.item() == 0.0 and mean_cos.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (x.grad == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_bad_input(impl):
    x = torch.randn(4, 3)
    with pytest.raises(IndexError):
        cosine_loss(x, torch.tensor([0, 4]), torch.tensor([1, 2]), impl=impl)
    with pytest.raises(ValueError):
        cosine_loss(x, torch.tensor([0, 1]), torch.tensor([1]), impl=impl)
    with pytest.raises(ValueError):
        cosine_loss(x, torch.tensor([0]), torch.tensor([1]), impl="cuda")


@needs_interpreter
def test_auto_dispatch(monkeypatch):
    x = torch.randn(4, 3, requires_grad=True)
    idx = torch.tensor([0, 1])
    assert type(cosine_loss(x, idx, idx.flip(0))[0].grad_fn).__name__ == "FusedCosineLossBackward"
    monkeypatch.delenv("TRITON_INTERPRET")  # CPU tensors, no interpreter: the PyTorch path
    assert type(cosine_loss(x, idx, idx.flip(0))[0].grad_fn).__name__ != "FusedCosineLossBackward"


def test_works_without_triton():
    """A machine without triton imports megajepa.ops and falls back to PyTorch."""
    code = """
import sys
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTriton())
import torch
from megajepa.ops import cosine_loss, cosine_loss_reference, triton_available
assert not triton_available()
h = torch.randn(6, 4)
p, t = torch.tensor([0, 1]), torch.tensor([2, 2])
assert torch.equal(cosine_loss(h, p, t)[0], cosine_loss_reference(h, p, t)[0])
assert "triton" not in sys.modules
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


@pytest.mark.gpu
@requires_cuda
@needs_triton
@compiled_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stopgrad", [False, True])
def test_compiled_kernel_on_gpu(dtype, stopgrad):
    g = torch.Generator().manual_seed(0)
    n, d, p = 4096, 2051, 1024
    hidden = torch.randn(n, d, generator=g).to(dtype)
    hidden[7] = 0
    pred = torch.randint(0, n, (p,), generator=g)
    tgt = torch.randint(0, 64, (p,), generator=g)
    pred[0], tgt[1] = 7, 7
    ref_loss, _, ref_grad = oracle(hidden, pred, tgt, stopgrad, 1.0)
    x = hidden.cuda().requires_grad_()
    loss, _ = cosine_loss(x, pred.cuda(), tgt.cuda(), stopgrad_target=stopgrad, impl="triton")
    loss.backward()
    torch.testing.assert_close(loss.double().cpu(), ref_loss, rtol=1e-5, atol=1e-6)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-4)
    torch.testing.assert_close(x.grad.double().cpu(), ref_grad, **tol)



COMPILE_FOR_HOPPER = """
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from megajepa.ops import COSINE_EPS, cosine_triton as ct

consts = {"EPS": COSINE_EPS, "ACC": tl.float32, "BLOCK_D": 1024}
acc = {"cos_ptr": "*fp32", "na_ptr": "*fp32", "nb_ptr": "*fp32"}
tail = {"EPS": "constexpr", "ACC": "constexpr", "BLOCK_D": "constexpr"}
fwd = {"h_ptr": "*bf16", "pred_ptr": "*i64", "tgt_ptr": "*i64", **acc, "D": "i32", "stride_h": "i32", **tail}
bwd = {"h_ptr": "*bf16", "dh_ptr": "*bf16", "pred_ptr": "*i64", "tgt_ptr": "*i64", **acc, "grad_ptr": "*fp32",
       "rows_ptr": "*i64", "entry_ptr": "*i64", "seg_end_ptr": "*i64", "P": "i32", "D": "i32", "stride_h": "i32",
       "stride_dh": "i32", **tail}
for kernel, sig in ((ct._cosine_fwd_kernel, fwd), (ct._cosine_bwd_kernel, bwd)):
    compiled = triton.compile(ASTSource(kernel, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))
    assert "cubin" in compiled.asm
"""


@needs_triton
@pytest.mark.skipif(not nvidia_compiler_available(), reason="triton without its NVIDIA backend")
def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter accepts code the compiler rejects: compile both kernels to sm_90 cubin.

    In a fresh process without TRITON_INTERPRET (triton cannot mix both modes in one process).
    """
    compile_without_interpreter(COMPILE_FOR_HOPPER)
