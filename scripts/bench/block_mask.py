"""BlockMask construction time: megajepa.masking.block_mask (from document ranges) against
torch's create_block_mask (not compiled: compiling it took over 40 s on the H200), on the
same packed rows (pair examples, text 40-400 and code 20-200 random tokens, k = 3; 60 examples
fill 7 rows of 4096). Median of --reps timed calls after one warm-up; on CUDA every call is
closed by torch.cuda.synchronize().

    python scripts/bench/block_mask.py                 # on the GPU (docs/benchmarks.md)
    python scripts/bench/block_mask.py --device cpu --reps 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megajepa.cli import HelpFormatter, positive_int  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/bench/block_mask.py",
                                description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--seq-len", type=positive_int, default=4096, help="packed row length")
    p.add_argument("--examples", type=positive_int, default=60, help="pair examples packed into rows")
    p.add_argument("--reps", type=positive_int, default=20, help="timed calls per variant (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random examples")
    return p


def median_ms(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from megajepa.layout import Example, pack
    from megajepa.masking import block_mask, mask_mod_for

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here (use --device cpu)", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)

    def view(lo, hi):
        m = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(16, 1000, (m,), generator=g).tolist()

    examples = [Example("pair", [view(40, 400), view(20, 200)]) for _ in range(args.examples)]
    b = pack(examples, args.seq_len, k=3, pred_ids=[2, 3, 4], pad_id=0).to(args.device)
    rows, n = b.doc_ids.shape
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ours = median_ms(lambda: block_mask(b.doc_ids, b.roles), args.reps, sync)
    theirs = median_ms(lambda: create_block_mask(mask_mod_for(b.doc_ids, b.roles), rows, None, n, n,
                                                 device=args.device, _compile=False), args.reps, sync)
    print(f"{args.device}, rows {rows} x {n}: ours {ours:.2f} ms; "
          f"create_block_mask (not compiled) {theirs:.2f} ms (median of {args.reps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
