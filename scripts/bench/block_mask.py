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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import median_time, random_pairs, sync_for  # noqa: E402
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from megajepa.layout import pack
    from megajepa.masking import block_mask, mask_mod_for

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here (use --device cpu)", file=sys.stderr)
        return 2
    examples = random_pairs(args.examples, 1000, args.seed)
    b = pack(examples, args.seq_len, k=3, pred_ids=[2, 3, 4], pad_id=0).to(args.device)
    rows, n = b.doc_ids.shape
    sync = sync_for(args.device)
    ours = 1000 * median_time(lambda: block_mask(b.doc_ids, b.roles), args.reps, sync=sync)
    theirs = 1000 * median_time(lambda: create_block_mask(mask_mod_for(b.doc_ids, b.roles), rows, None, n, n,
                                                          device=args.device, _compile=False),
                                args.reps, sync=sync)
    print(f"{args.device}, rows {rows} x {n}: ours {ours:.2f} ms; "
          f"create_block_mask (not compiled) {theirs:.2f} ms (median of {args.reps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
