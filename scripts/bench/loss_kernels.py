"""Benchmark the fused loss-head kernels of megajepa.ops (DESIGN.md sections 5 and 8).

1. JEPA cosine loss: the Triton kernel vs eager PyTorch (gather + cosine + mean), forward and
   backward, as median time and achieved GB/s against the device's measured copy bandwidth.
   Useful bytes (s = bytes per element of hidden, 8 = an int64 index):

       forward  = 2P * (D*s + 8)            read both indices and the 2P gathered rows
       backward = 2P * (D*s + 8) + N*D*s    read them again, write the dense d_hidden [N, D] once

   Both implementations are charged the same bytes, so the GB/s ratio is the speed ratio.
   Bandwidth = 2 * bytes / time of one large device-to-device copy.

2. LM loss: liger fused linear cross-entropy vs the chunked PyTorch version vs full logits
   (unfused), forward + backward time and peak extra memory (max_memory_allocated minus what
   was allocated before; includes d_hidden and d_weight, the same for all).

GPU (default sizes, one H100/H200, about 2 minutes):
    python scripts/bench/loss_kernels.py --out runs/kernels.md
CPU (tiny sizes, Triton interpreter or the PyTorch fallback; not GPU numbers):
    python scripts/bench/loss_kernels.py --quick --out runs/kernels_cpu.md
Writes Markdown to --out and the same results as JSON beside it (.json). Needs torch; triton
and liger-kernel are used when installed. No DeepSpeed.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:  # on CPU the kernel can only run in Triton's interpreter; set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import markdown_table, median_time, provenance, write_report  # noqa: E402
from megajepa.ops import COSINE_EPS, cosine_loss, linear_cross_entropy, liger_available, triton_available  # noqa: E402

MiB = 2**20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="GB/s formula and sizes: see the module docstring.")
    p.add_argument("--out", type=Path, default=None, help="Markdown result path (JSON written beside it); default: print only")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CPU smoke runs (default on CPU)")
    p.add_argument("--pairs", type=str, default=None, help="comma list of JEPA pair counts P (default 256,1024,4096,16384,65536)")
    p.add_argument("--dims", type=str, default=None, help="comma list of hidden sizes D (default 2048,4096)")
    p.add_argument("--min-rows", type=int, default=None, help="rows N of hidden: max(min-rows, 2P) (default 32768, so N <= 131072)")
    p.add_argument("--vocabs", type=str, default=None, help="comma list of vocabulary sizes V for the LM loss (default 32768,131072)")
    p.add_argument("--tokens", type=int, default=None, help="label tokens M for the LM loss (default 8192)")
    p.add_argument("--lm-dim", type=int, default=None, help="hidden size D for the LM loss (default 2048)")
    p.add_argument("--chunk-sizes", type=str, default=None, help="comma list of chunk sizes for the chunked LM loss (default 1024,4096)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="input dtype (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the eager cosine loss")
    args = p.parse_args(argv)
    quick = args.quick or not CUDA
    defaults = dict(
        pairs="64,256" if quick else "256,1024,4096,16384,65536",
        dims="64,257" if quick else "2048,4096",
        min_rows=1024 if quick else 32768,
        vocabs="1000,4000" if quick else "32768,131072",
        tokens=512 if quick else 8192,
        lm_dim=64 if quick else 2048,
        chunk_sizes="128" if quick else "1024,4096",
        dtype="bf16" if CUDA else "fp32",
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.quick = quick
    for k in ("pairs", "dims", "vocabs", "chunk_sizes"):
        setattr(args, k, [int(x) for x in getattr(args, k).split(",")])
    args.dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    return args


def bench(fn, grad_to_none=None, quick_reps=3):
    """Median milliseconds: triton.testing.do_bench on GPU (CUDA events, L2 flushed), wall clock on CPU."""
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    def no_grads():
        for t in grad_to_none or ():
            t.grad = None

    return 1e3 * median_time(fn, quick_reps, before=no_grads)


def copy_bandwidth_gbs(quick):
    """Measured bandwidth of one large device-to-device copy: 2 * bytes / time."""
    n = (64 if quick else 1024) * MiB
    src = torch.empty(n, dtype=torch.uint8, device="cuda" if CUDA else "cpu")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * n / ms / 1e6


def eager_cosine(hidden, pred, tgt):
    """What one writes in PyTorch: gather, upcast, cosine with the same epsilon rule, mean."""
    a = hidden[pred].float()
    b = hidden[tgt].float()
    na = torch.linalg.vector_norm(a, dim=-1).clamp_min(COSINE_EPS)
    nb = torch.linalg.vector_norm(b, dim=-1).clamp_min(COSINE_EPS)
    cos = (a * b).sum(-1) / (na * nb)
    return (1.0 - cos).mean(), cos.detach().mean()


def bench_cosine(args, bandwidth):
    dev = "cuda" if CUDA else "cpu"
    impls = {"eager": eager_cosine}
    if args.compile:
        impls["compiled"] = torch.compile(eager_cosine, dynamic=False)
    if triton_available():
        impls["triton"] = lambda h, p, t: cosine_loss(h, p, t, impl="triton")
    rows = []
    for d in args.dims:
        for p in args.pairs:
            n = max(args.min_rows, 2 * p)
            g = torch.Generator(device=dev).manual_seed(0)
            hidden = torch.randn(n, d, device=dev, dtype=args.dtype, generator=g).requires_grad_()
            perm = torch.randperm(n, device=dev, generator=g)
            pred, tgt = perm[:p].contiguous(), perm[p : 2 * p].contiguous()
            s = hidden.element_size()
            fwd_bytes = 2 * p * (d * s + 8)
            bwd_bytes = fwd_bytes + n * d * s
            losses = {}
            for name, fn in impls.items():
                with torch.no_grad():
                    fwd_ms = bench(lambda: fn(hidden, pred, tgt))
                loss = fn(hidden, pred, tgt)[0]
                losses[name] = loss.item()
                bwd_ms = bench(lambda: loss.backward(retain_graph=True), grad_to_none=[hidden])
                rows.append(dict(
                    N=n, D=d, P=p, dtype=str(args.dtype).replace("torch.", ""), impl=name,
                    fwd_ms=fwd_ms, bwd_ms=bwd_ms,
                    fwd_gbs=fwd_bytes / fwd_ms / 1e6, bwd_gbs=bwd_bytes / bwd_ms / 1e6,
                    fwd_pct_bw=100 * fwd_bytes / fwd_ms / 1e6 / bandwidth,
                    bwd_pct_bw=100 * bwd_bytes / bwd_ms / 1e6 / bandwidth,
                    loss_diff_vs_eager=abs(losses[name] - losses["eager"]),
                ))
                del loss
            del hidden
    return rows


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """CPU stand-in for peak memory: the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest_bytes = max(self.largest_bytes, t.numel() * t.element_size())
        return out


def peak_extra_mib(step):
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / MiB
    with _LargestTensor() as mode:
        step()
    return mode.largest_bytes / MiB


def bench_lm(args):
    dev = "cuda" if CUDA else "cpu"
    impls = [("unfused (full logits)", dict(impl="reference"))]
    impls += [(f"chunked (chunk {c})", dict(impl="chunked", chunk_size=c)) for c in args.chunk_sizes]
    if CUDA and liger_available():
        impls.append(("liger", dict(impl="liger")))
    rows = []
    m, d = args.tokens, args.lm_dim
    for v in args.vocabs:
        g = torch.Generator(device=dev).manual_seed(0)
        hidden = torch.randn(m, d, device=dev, dtype=args.dtype, generator=g).requires_grad_()
        weight = (torch.randn(v, d, device=dev, generator=g) / d**0.5).to(args.dtype).requires_grad_()
        targets = torch.randint(0, v, (m,), device=dev, generator=g)
        for name, kw in impls:
            def step():
                linear_cross_entropy(hidden, weight, targets, **kw).backward()

            try:
                mib = peak_extra_mib(step)
                with torch.no_grad():
                    loss = linear_cross_entropy(hidden, weight, targets, **kw).item()
                ms = bench(step, grad_to_none=[hidden, weight])
            except torch.OutOfMemoryError:
                rows.append(dict(V=v, M=m, D=d, impl=name, error="out of memory"))
                continue
            finally:
                hidden.grad = weight.grad = None
            rows.append(dict(V=v, M=m, D=d, dtype=str(args.dtype).replace("torch.", ""), impl=name,
                             fwd_bwd_ms=ms, peak_extra_mib=mib, loss_per_token=loss / m))
        del hidden, weight
    return rows


def versions():
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "liger_kernel"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001 - not installed
            out[mod] = "not installed"
    return out


def to_markdown(res):
    cpu_note = (
        "\n**Ran on CPU: these are not GPU numbers.** The Triton kernel ran in the interpreter "
        "(TRITON_INTERPRET=1), which is orders of magnitude slower than compiled code; the numbers only show "
        "that the script runs and the implementations agree. LM 'peak' on CPU is the largest single tensor "
        "allocated (MiB), not a peak of live memory.\n" if not res["cuda"] else "")
    lines = [
        f"Device: {res['device']}  ",
        f"Date: {res['date']}  ",
        f"Command: `{res['command']}`  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + "  ",
        f"Measured copy bandwidth: {res['bandwidth_gbs']:.0f} GB/s",
        cpu_note,
        "JEPA cosine loss (median ms; GB/s of useful bytes: fwd 2P(Ds+8), bwd 2P(Ds+8)+NDs; % of copy bandwidth):",
        "",
    ]
    eager = {(r["N"], r["D"], r["P"]): r for r in res["cosine"] if r["impl"] == "eager"}
    rows = []
    for r in res["cosine"]:
        e = eager[(r["N"], r["D"], r["P"])]
        rows.append([r["N"], r["D"], r["P"], r["dtype"], r["impl"], f"{r['fwd_ms']:.4g}", f"{r['fwd_gbs']:.4g}",
                     f"{r['fwd_pct_bw']:.1f}", f"{r['bwd_ms']:.4g}", f"{r['bwd_gbs']:.4g}", f"{r['bwd_pct_bw']:.1f}",
                     f"{e['fwd_ms'] / r['fwd_ms']:.2f}x / {e['bwd_ms'] / r['bwd_ms']:.2f}x",
                     f"{r['loss_diff_vs_eager']:.1e}"])
    lines += [markdown_table(["N", "D", "P", "dtype", "impl", "fwd ms", "fwd GB/s", "fwd %BW", "bwd ms", "bwd GB/s",
                              "bwd %BW", "speedup fwd / bwd", "\\|loss-eager\\|"], rows),
              "", "LM loss, forward + backward (peak extra memory includes d_hidden and d_weight):", ""]
    rows = []
    for r in res["lm"]:
        if "error" in r:
            rows.append([r["V"], r["M"], r["D"], "", r["impl"], r["error"], "", ""])
        else:
            rows.append([r["V"], r["M"], r["D"], r["dtype"], r["impl"], f"{r['fwd_bwd_ms']:.4g}",
                         f"{r['peak_extra_mib']:.1f}", f"{r['loss_per_token']:.4f}"])
    lines.append(markdown_table(["V", "M", "D", "dtype", "impl", "fwd+bwd ms", "peak extra MiB", "loss / token"],
                                rows))
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    res = dict(**provenance(__file__, argv), cuda=CUDA, versions=versions())
    print(f"device: {res['device']}" + ("" if CUDA else "  [CPU run: NOT GPU numbers]"), flush=True)
    if not CUDA:
        print("triton:", "interpreter (TRITON_INTERPRET=1)" if triton_available() else "not installed, PyTorch fallback only")
    started = time.time()
    bandwidth = copy_bandwidth_gbs(args.quick)
    print(f"copy bandwidth: {bandwidth:.0f} GB/s", flush=True)
    res["bandwidth_gbs"] = bandwidth
    res["cosine"] = bench_cosine(args, bandwidth)
    print(f"cosine done ({time.time() - started:.0f} s)", flush=True)
    res["lm"] = bench_lm(args)
    print(f"lm loss done ({time.time() - started:.0f} s)", flush=True)
    md = to_markdown(res)
    print(md)
    if args.out:
        write_report(args.out, md, res)
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
