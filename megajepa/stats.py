"""Statistics and reports for (k, lambda) sweeps: the paper's tables and Figure 3.

In: per-seed metric values of every grid cell ``(k, lbd)`` and of the next-token baseline,
``{seed: {metric: value}}`` (values are fractions in [0, 1], as in ``metrics.json``).
Out: a Markdown report (mean ± std over seeds per cell, best cell, one-tailed paired t-test
of each cell against the baseline) and a k × lambda heatmap of the mean.

* ``std`` is the sample standard deviation (``ddof=1``); NaN for one seed.
* The t-test pairs a cell's run with the baseline run of the **same seed** (same data
  order and initialization), uses only seeds present in both, and tests
  H1: mean(cell - baseline) > 0 with ``scipy.stats.ttest_rel(alternative="greater")``.
  With fewer than two pairs, or all differences equal, p is NaN (shown as ``n/a``).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["mean_std", "paired_ttest_greater", "cell_summary", "best_cell", "sweep_table",
           "plot_heatmap", "format_cell", "markdown_table"]

Seeds = Mapping[int, Mapping[str, float]]


def mean_std(values: Sequence[float]) -> tuple:
    """``(mean, sample std)``; std is NaN for a single value, both NaN for none."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def paired_ttest_greater(cell: Mapping[int, float], baseline: Mapping[int, float]) -> tuple:
    """``(t, p, n_pairs)`` of the one-tailed paired t-test cell > baseline, paired by seed."""
    from scipy import stats

    seeds = sorted(set(cell) & set(baseline))
    if len(seeds) < 2:
        return float("nan"), float("nan"), len(seeds)
    a = np.array([cell[s] for s in seeds], dtype=np.float64)
    b = np.array([baseline[s] for s in seeds], dtype=np.float64)
    if np.allclose(a - b, (a - b)[0], rtol=0, atol=1e-15):
        return float("nan"), float("nan"), len(seeds)  # zero variance: undefined
    res = stats.ttest_rel(a, b, alternative="greater")
    return float(res.statistic), float(res.pvalue), len(seeds)


def _metric(seeds: Seeds, metric: str) -> dict:
    return {s: float(m[metric]) for s, m in seeds.items() if metric in m}


def cell_summary(seeds: Seeds, metric: str, baseline: Optional[Seeds] = None) -> dict:
    """``{"mean", "std", "n", "t", "p", "pairs"}`` of one cell for ``metric``."""
    vals = _metric(seeds, metric)
    mean, std = mean_std(vals.values())
    out = {"mean": mean, "std": std, "n": len(vals), "t": float("nan"), "p": float("nan"),
           "pairs": 0}
    if baseline is not None:
        out["t"], out["p"], out["pairs"] = paired_ttest_greater(vals, _metric(baseline, metric))
    return out


def best_cell(cells: Mapping[tuple, Seeds], metric: str) -> Optional[tuple]:
    """The ``(k, lbd)`` with the highest mean (ties: smaller k, then smaller lambda)."""
    scored = [(cell_summary(s, metric)["mean"], key) for key, s in cells.items()]
    scored = [(m, key) for m, key in scored if not math.isnan(m)]
    if not scored:
        return None
    return max(scored, key=lambda x: (x[0], -x[1][0], -x[1][1]))[1]


def format_cell(mean: float, std: float, n: int) -> str:
    """Percent with two decimals: ``51.20 ± 1.05``; ``n/a`` for no value."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{100 * mean:.2f} (n={n})"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def _num(x: float) -> str:
    return f"{x:g}"


def markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """A Markdown table: the header, the separator, one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def sweep_table(cells: Mapping[tuple, Seeds], baseline: Optional[Seeds],
                metrics: Sequence[str], primary: str, title: str = "Sweep") -> str:
    """Markdown: one row per cell (and the baseline), a k × lambda grid of ``primary``,
    and the best cell. Values are percent."""
    lines = [f"## {title}", "",
             f"Accuracy in %, mean ± sample std over seeds. p: one-tailed paired t-test of "
             f"the cell against the next-token baseline on **{primary}**, paired by seed "
             f"(H1: cell > baseline; scipy.stats.ttest_rel).", ""]
    head = ["run", "k", "λ", "seeds"] + list(metrics) + [f"p ({primary})"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if baseline:
        row = ["next-token baseline", "–", "0", str(len(baseline))]
        row += [format_cell(**{k: v for k, v in cell_summary(baseline, m).items()
                               if k in ("mean", "std", "n")}) for m in metrics]
        lines.append("| " + " | ".join(row + [""]) + " |")
    best = best_cell(cells, primary)
    for key in sorted(cells):
        k, lbd = key
        row = ["LLM-JEPA", str(k), _num(lbd), str(len(cells[key]))]
        for m in metrics:
            s = cell_summary(cells[key], m)
            text = format_cell(s["mean"], s["std"], s["n"])
            row.append(f"**{text}**" if key == best and m == primary else text)
        p = cell_summary(cells[key], primary, baseline)["p"] if baseline else float("nan")
        lines.append("| " + " | ".join(row + [_p(p)]) + " |")

    ks = sorted({k for k, _ in cells})
    lbds = sorted({lbd for _, lbd in cells})
    if ks and lbds:
        lines += ["", f"### {primary}: k × λ", "",
                  "| k \\ λ | " + " | ".join(_num(x) for x in lbds) + " |",
                  "|" + "---|" * (len(lbds) + 1)]
        for k in ks:
            row = []
            for lbd in lbds:
                s = cell_summary(cells.get((k, lbd), {}), primary)
                row.append(format_cell(s["mean"], s["std"], s["n"]))
            lines.append(f"| {k} | " + " | ".join(row) + " |")
    if best is not None:
        s = cell_summary(cells[best], primary, baseline)
        text = (f"Best cell: k={best[0]}, λ={_num(best[1])}: {primary} "
                f"{format_cell(s['mean'], s['std'], s['n'])}")
        if baseline:
            b = cell_summary(baseline, primary)
            text += (f" vs baseline {format_cell(b['mean'], b['std'], b['n'])}, "
                     f"p = {_p(s['p'])} ({s['pairs']} paired seeds)")
            if s["mean"] < b["mean"]:
                text += "; every LLM-JEPA cell is below the baseline"
        lines += ["", text + "."]
    return "\n".join(lines) + "\n"


def plot_heatmap(cells: Mapping[tuple, Seeds], metric: str, path: Optional[str] = None,
                 baseline: Optional[Seeds] = None):
    """k (rows) × lambda (columns) heatmap of the mean ``metric`` in %, annotated."""
    from matplotlib.figure import Figure

    ks = sorted({k for k, _ in cells})
    lbds = sorted({lbd for _, lbd in cells})
    grid = np.full((len(ks), len(lbds)), np.nan)
    for i, k in enumerate(ks):
        for j, lbd in enumerate(lbds):
            if (k, lbd) in cells:
                grid[i, j] = 100 * cell_summary(cells[(k, lbd)], metric)["mean"]
    fig = Figure(figsize=(1.2 * len(lbds) + 2.5, 0.8 * len(ks) + 2), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{metric} (%)")
    ax.set_xticks(range(len(lbds)), [_num(x) for x in lbds])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("λ")
    ax.set_ylabel("k")
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(ks)):
        for j in range(len(lbds)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center",
                        color="black" if grid[i, j] > mid else "white")
    title = f"{metric}, mean over seeds"
    if baseline:
        title += f" (baseline {100 * cell_summary(baseline, metric)['mean']:.1f})"
    ax.set_title(title)
    fig.tight_layout()
    if path:
        fig.savefig(path)
    return fig
