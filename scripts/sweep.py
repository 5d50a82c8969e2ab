#!/usr/bin/env python3
"""(k, lambda) × seeds sweep with a next-token baseline: train, export, eval, report.

    python scripts/sweep.py --config configs/nlrx_tiny.yaml --ks 1,2,4 --lambdas 0.5,1,2 \\
        --seeds 0,1,2 --data ../shared/data/nlrx_synth_test.jsonl --task nlrx --out runs/sweep

Cells run one after another, each in its own run directory::

    <out>/baseline/seed<S>/          lambda = 0, k = 0 (next-token only)
    <out>/k<K>_lbd<L>/seed<S>/       LLM-JEPA

Each step is a shell command template with placeholders ``{k} {lbd} {seed} {run_dir}
{config} {data} {task} {python}`` (values are shell-quoted; write literal braces as
``{{`` ``}}``, Python ``str.format`` rules). A cell is finished when its
metrics file exists; finished cells are skipped, so an interrupted sweep resumes where it
stopped (a train or export step that succeeded leaves a ``.<step>_done`` marker and is not
rerun either).
A failed step is logged (``<run_dir>/<step>.log``) and the sweep moves on; the exit
status is 1 if any cell failed. At the end, ``<out>/results.md`` (table),
``<out>/heatmap.png`` and ``<out>/results.json`` are written from every finished cell
(``--report-only`` rebuilds them without running anything).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megajepa import stats  # noqa: E402

DEFAULT_TRAIN = ("{python} pretrain.py --config {config} --jepa.k {k} --jepa.lbd {lbd} "
                 "--seed {seed} --run-dir {run_dir}")
DEFAULT_EXPORT = "{python} -m megajepa.export {run_dir} {run_dir}/export --overwrite"
DEFAULT_EVAL = ("{python} -m megajepa.eval --model {run_dir}/export --data {data} "
                "--task {task} --out {run_dir}/eval")
DEFAULT_METRICS = "{run_dir}/eval/metrics.json"
TASK_METRICS = {"nlrx": ("exact", "startswith", "semantic"), "gsm8k": ("exact", "answer"),
                "sql": ("exact", "execution"), "classify": ("label",)}


def _floats(s: str) -> list:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list:
    return [int(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="", help="training config YAML ({config})")
    p.add_argument("--ks", type=_ints, default=[1, 2, 4], help="predictor tokens k, comma list")
    p.add_argument("--lambdas", type=_floats, default=[0.5, 1.0, 2.0],
                   help="JEPA loss weights lambda, comma list")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds, comma list")
    p.add_argument("--no-baseline", action="store_true", help="skip the lambda=0 baseline")
    p.add_argument("--data", default="", help="held-out JSONL for eval ({data})")
    p.add_argument("--task", default="nlrx", choices=sorted(TASK_METRICS), help="({task})")
    p.add_argument("--metric", default=None,
                   help="primary metric for p-values, best cell, heatmap "
                        "(default: the task's last: semantic, answer, execution, label)")
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--train-cmd", default=DEFAULT_TRAIN, help="train command template")
    p.add_argument("--export-cmd", default=DEFAULT_EXPORT,
                   help="export command template ('' to skip); skipped when "
                        "{run_dir}/export/config.json exists (pretrain.py exports by default)")
    p.add_argument("--eval-cmd", default=DEFAULT_EVAL, help="eval command template")
    p.add_argument("--metrics-file", default=DEFAULT_METRICS,
                   help="where the eval step leaves its metrics JSON (template)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed step")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report")
    return p


def cells(args) -> list:
    """``[(name, k, lbd, seed, run_dir)]``: baseline first, then the grid, seed-major."""
    out = Path(args.out)
    todo = []
    for seed in args.seeds:
        if not args.no_baseline:
            todo.append(("baseline", 0, 0.0, seed, out / "baseline" / f"seed{seed}"))
        for k in args.ks:
            for lbd in args.lambdas:
                todo.append(("jepa", k, lbd, seed, out / f"k{k}_lbd{lbd:g}" / f"seed{seed}"))
    return todo


def render(template: str, **values) -> str:
    return template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})


def _read_metrics(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_cell(args, k, lbd, seed, run_dir: Path) -> bool:
    """Run the missing steps of one cell; True when its metrics file exists afterwards."""
    values = dict(k=k, lbd=f"{lbd:g}", seed=seed, run_dir=run_dir, config=args.config,
                  data=args.data, task=args.task, python=sys.executable)
    metrics = Path(args.metrics_file.format(run_dir=run_dir))
    if _read_metrics(metrics) is not None:
        print(f"[sweep] done   {run_dir}")
        return True
    steps = [("train", args.train_cmd), ("export", args.export_cmd), ("eval", args.eval_cmd)]
    for step, template in steps:
        if not template:
            continue
        marker = run_dir / f".{step}_done"
        if step != "eval" and marker.exists():  # eval's own marker is the metrics file
            continue
        if step == "export" and (run_dir / "export" / "config.json").exists():
            continue
        cmd = render(template, **values)
        print(f"[sweep] {step:<6} {run_dir}: {cmd}", flush=True)
        if args.dry_run:
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(run_dir / f"{step}.log", "w") as log:
            rc = subprocess.run(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"[sweep] FAILED {step} of {run_dir} (exit {rc}); see {run_dir / step}.log",
                  file=sys.stderr)
            return False
        marker.write_text(f"{time.time() - start:.1f}s\n")
    if args.dry_run:
        return True
    if _read_metrics(metrics) is None:
        print(f"[sweep] FAILED {run_dir}: no metrics at {metrics}", file=sys.stderr)
        return False
    return True


def collect(args):
    """``(grid, baseline)``: ``{(k, lbd): {seed: metrics}}`` and ``{seed: metrics}``."""
    grid, baseline = {}, {}
    for name, k, lbd, seed, run_dir in cells(args):
        m = _read_metrics(Path(args.metrics_file.format(run_dir=run_dir)))
        if m is None:
            continue
        if name == "baseline":
            baseline[seed] = m
        else:
            grid.setdefault((k, lbd), {})[seed] = m
    return grid, baseline


def report(args) -> str:
    metrics = list(TASK_METRICS[args.task])
    primary = args.metric or metrics[-1]
    if primary not in metrics:
        metrics.append(primary)
    grid, baseline = collect(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = stats.sweep_table(grid, baseline or None, metrics, primary,
                              title=f"{args.task} sweep ({Path(args.data).name or 'eval'})")
    (out / "results.md").write_text(table)
    raw = {"primary": primary, "baseline": {str(s): m for s, m in baseline.items()},
           "cells": [{"k": k, "lbd": lbd, "seeds": {str(s): m for s, m in v.items()},
                      **stats.cell_summary(v, primary, baseline or None)}
                     for (k, lbd), v in sorted(grid.items())]}
    (out / "results.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    if grid:
        stats.plot_heatmap(grid, primary, str(out / "heatmap.png"), baseline or None)
    return table


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    failed = []
    if not args.report_only:
        for name, k, lbd, seed, run_dir in cells(args):
            if not run_cell(args, k, lbd, seed, run_dir):
                failed.append(run_dir)
                if args.fail_fast:
                    break
    if args.dry_run:
        return 0
    print(report(args))
    print(f"[sweep] report: {Path(args.out) / 'results.md'}, {Path(args.out) / 'heatmap.png'}")
    if failed:
        print(f"[sweep] {len(failed)} cell(s) failed: " + ", ".join(map(str, failed)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
