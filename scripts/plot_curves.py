#!/usr/bin/env python3
"""Training curves of a sweep from each run's metrics.jsonl: lm_loss vs step and the JEPA
distance 1 - cosine vs step (log scales), one colour per arm, faint lines per seed and a
bold (smoothed) mean.

    python scripts/plot_curves.py --out docs/results/curves.png \\
        "next-token=runs/sweep/baseline/seed*" "k=3,λ=2=runs/sweep/k3_lbd2/seed*"

Each positional argument is ``LABEL=GLOB`` (split at the last ``=``; the glob matches run
directories).
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np


def read_metrics(run_dir: str) -> dict:
    """``{key: (steps, values)}`` of the logged training metrics (eval rows skipped)."""
    rows = []
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        line = line.strip()
        if line:
            row = json.loads(line)
            if "step" in row and "lm_loss" in row:
                rows.append(row)
    out = {}
    for key in ("lm_loss", "cosine", "jepa_loss"):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            s, v = zip(*pts)
            out[key] = (np.array(s), np.array(v, dtype=float))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arms", nargs="+", help="LABEL=GLOB of run directories")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--smooth", type=int, default=5,
                   help="moving average over this many logged points for the bold mean line")
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lm, ax_cos) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(args.arms):
        label, _, pattern = arm.rpartition("=")  # labels may hold "="
        runs = sorted(glob.glob(pattern))
        if not runs:
            raise SystemExit(f"error: no run directories match {pattern!r}")
        c = colors[i % len(colors)]
        curves = [read_metrics(r) for r in runs]
        for key, ax in (("lm_loss", ax_lm), ("cosine", ax_cos)):
            series = [m[key] for m in curves if key in m]
            # the baseline logs cosine = 0 (no JEPA term): nothing to draw
            series = [s for s in series if key != "cosine" or np.any(s[1] != 0)]
            if not series:
                continue
            for steps, vals in series:
                ax.plot(steps, 1.0 - vals if key == "cosine" else vals, color=c, alpha=0.2,
                        lw=0.7)
            n = min(len(s[0]) for s in series)
            mean = np.mean([s[1][:n] for s in series], axis=0)
            if key == "cosine":
                mean = 1.0 - mean
            if args.smooth > 1 and n >= args.smooth:
                w = np.ones(args.smooth) / args.smooth
                mean = np.convolve(np.pad(mean, (args.smooth - 1, 0), mode="edge"), w, "valid")
            ax.plot(series[0][0][:n], mean, color=c, lw=1.8,
                    label=f"{label} (mean of {len(series)})")
    ax_lm.set_yscale("log")
    ax_lm.set_xlabel("step")
    ax_lm.set_ylabel("next-token loss (code tokens)")
    ax_lm.set_title("lm_loss")
    ax_cos.set_yscale("log")
    ax_cos.set_xlabel("step")
    ax_cos.set_ylabel("1 - cos(Enc(Text+pred), Enc(Code))")
    ax_cos.set_title("JEPA distance (training batches)")
    for ax in (ax_lm, ax_cos):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
