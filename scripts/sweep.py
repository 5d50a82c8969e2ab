#!/usr/bin/env python3
"""(k, lambda) × seeds sweep with a next-token baseline: train, export, eval, report.

    python -m data_tools.generate --out data/nlrx --train 0 --test 200 --formats pairs
    python scripts/sweep.py --ks 1,2,4 --lambdas 0.5,1,2 --seeds 0,1,2 \\
        --data data/nlrx/pairs_test.jsonl --task nlrx --out runs/sweep [--config cfg.yaml]

Cells run one after another, each in its own run directory::

    <out>/baseline/seed<S>/          lambda = 0, k = 0 (next-token only)
    <out>/k<K>_lbd<L>/seed<S>/       LLM-JEPA

Each step is a shell command template with placeholders ``{k} {lbd} {seed} {run_dir}
{config} {data} {task} {python} {pretrain}`` (values are shell-quoted; write literal braces
as ``{{`` ``}}``, Python ``str.format`` rules). Every input is checked before the first cell
(the templates, the grid, ``--metric``, the config and its data paths, the eval JSONL): a
problem is one ``error:`` line and exit 2, with nothing run or written. A cell is finished
when its metrics file exists; finished cells are skipped, so an interrupted sweep resumes
where it stopped (a train or export step that succeeded leaves a ``.<step>_done`` marker and
is not rerun either). A failed step is logged (``<run_dir>/<step>.log``) and the sweep moves
on; the exit status is 1 if any cell failed. At the end, ``<out>/results.md`` (table),
``<out>/results.json`` and, once an LLM-JEPA cell has finished, ``<out>/heatmap.png`` are
written from every finished cell (``--report-only`` rebuilds them without running anything).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megajepa import stats  # noqa: E402
from megajepa.cli import HelpFormatter, child_env  # noqa: E402
from megajepa.eval.tasks import METRICS as TASK_METRICS  # noqa: E402

DEFAULT_TRAIN = ("{python} {pretrain} --config {config} --jepa.k {k} --jepa.lbd {lbd} "
                 "--seed {seed} --run-dir {run_dir}")
DEFAULT_EXPORT = "{python} -m megajepa.export {run_dir} {run_dir}/export --overwrite"
DEFAULT_EVAL = ("{python} -m megajepa.eval --model {run_dir}/export --data {data} "
                "--task {task} --out {run_dir}/eval")
DEFAULT_METRICS = "{run_dir}/eval/metrics.json"
PLACEHOLDERS = ("k", "lbd", "seed", "run_dir", "config", "data", "task", "python", "pretrain")

EPILOG = """\
Command templates take the placeholders {k} {lbd} {seed} {run_dir} {config}
{data} {task} {python} {pretrain} (shell-quoted; literal braces as {{ }}). Cells:
  <out>/baseline/seed<S>/       lambda = 0, k = 0 (next-token only)
  <out>/k<K>_lbd<L>/seed<S>/    LLM-JEPA
All inputs are checked before the first cell. Writes <out>/results.md,
<out>/results.json and <out>/heatmap.png (once an LLM-JEPA cell has finished)."""


class SweepError(Exception):
    """A bad sweep input, reported as one ``error:`` line before anything runs."""


def _list(kind, cast):
    def parse(text: str) -> list:
        try:
            return [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind}, got {text!r}") from None
    parse.__name__ = kind
    return parse


_ints = _list("whole numbers", int)
_floats = _list("numbers", float)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/sweep.py",
                                description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--config", default="",
                   help="training config YAML for the train command ({config}); "
                        "default: none, pretrain.py's defaults (the embedded dataset)")
    p.add_argument("--ks", type=_ints, default="1,2,4", help="predictor tokens k, comma list")
    p.add_argument("--lambdas", type=_floats, default="0.5,1,2",
                   help="JEPA loss weights lambda, comma list")
    p.add_argument("--seeds", type=_ints, default="0,1,2", help="seeds, comma list")
    p.add_argument("--no-baseline", action="store_true", help="skip the lambda=0 baseline")
    p.add_argument("--data", default="",
                   help="held-out chat JSONL the eval step scores ({data}); needed by the "
                        "default --eval-cmd")
    p.add_argument("--task", default="nlrx", choices=sorted(TASK_METRICS),
                   help="eval task ({task}): " + "; ".join(
                       f"{t}: {', '.join(m)}" for t, m in sorted(TASK_METRICS.items())))
    p.add_argument("--metric", default=None,
                   help="primary metric for p-values, best cell and heatmap; default: the "
                        "task's last (semantic, answer, execution, label)")
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--train-cmd", default=DEFAULT_TRAIN,
                   help="train command template; --config {config} is left out when no "
                        "--config is given")
    p.add_argument("--export-cmd", default=DEFAULT_EXPORT,
                   help="export command template ('' to skip); skipped when "
                        "{run_dir}/export/config.json exists (pretrain.py writes it itself)")
    p.add_argument("--eval-cmd", default=DEFAULT_EVAL, help="eval command template")
    p.add_argument("--metrics-file", default=DEFAULT_METRICS,
                   help="where the eval step leaves its metrics JSON (template)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed step")
    p.add_argument("--dry-run", action="store_true",
                   help="check the inputs and print the commands; run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild the report from finished cells")
    return p


# ----------------------------------------------------------------- input checks
def _placeholders(flag: str, template: str) -> set:
    """Field names of ``template``; bad syntax or an unknown name is a ``SweepError``."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise SweepError(f"{flag} {template!r}: {e} (write literal braces as {{{{ }}}})") from None
    for name in names:
        if name not in PLACEHOLDERS:
            shown = "{" + name + "}" if name else "{}"
            raise SweepError(f"{flag}: unknown placeholder {shown}; known: "
                             + " ".join("{" + n + "}" for n in PLACEHOLDERS))
    return names


def _check_grid(args) -> None:
    if not args.seeds:
        raise SweepError("--seeds is empty")
    if not args.ks or not args.lambdas:
        raise SweepError("--ks and --lambdas need at least one value each")
    for flag, values in (("--ks", args.ks), ("--lambdas", args.lambdas), ("--seeds", args.seeds)):
        bad = [v for v in values if not math.isfinite(v) or v < 0]
        if bad:
            raise SweepError(f"{flag} {bad[0]:g}: must be a finite number >= 0")
        if len(set(values)) != len(values):
            raise SweepError(f"{flag} lists a value twice: {','.join(f'{v:g}' for v in values)}")
    metrics = TASK_METRICS[args.task]
    if args.metric is not None and args.metric not in metrics:
        raise SweepError(f"--metric {args.metric}: not a metric of --task {args.task} "
                         f"(one of {', '.join(metrics)})")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).replace("\n  - ", "; ").split())


def _check_config(args) -> None:
    """The YAML loads and validates with each cell's flags; the paths it names exist."""
    from megajepa import config

    path = args.config
    if not Path(path).is_file():
        raise SweepError(f"--config {path}: does not exist" if not Path(path).exists()
                         else f"--config {path}: not a file")
    try:
        cfg = config.load(["--config", path])
        if args.train_cmd == DEFAULT_TRAIN:
            grid = [(k, lbd) for k in args.ks for lbd in args.lambdas]
            for k, lbd in ([] if args.no_baseline else [(0, 0.0)]) + grid:
                config.load(["--config", path, "--jepa.k", str(k), "--jepa.lbd", f"{lbd:g}",
                             "--seed", str(args.seeds[0])])
    except (ValueError, SystemExit) as e:
        text = _one_line(e)
        raise SweepError(text if path in text else f"--config {path}: {text}") from None
    for key in ("train", "eval", "tokenizer"):
        value = getattr(cfg.data, key)
        if value and not os.path.exists(value):
            raise SweepError(f"--config {path}: data.{key} {value}: does not exist")


def _check_data(args) -> None:
    from data_tools.errors import DataError
    from megajepa.eval.run import read_records

    if not args.data:
        raise SweepError("--data is needed: the eval step scores a held-out chat JSONL (make "
                         "one with: python -m data_tools.generate --out data/nlrx --train 0 "
                         "--test 200 --formats pairs)")
    try:
        read_records(args.data)
    except DataError as e:
        raise SweepError(f"--data {_one_line(e)}") from None


def check_inputs(args) -> None:
    """Everything a sweep needs, checked before the first cell (``SweepError`` if not)."""
    _check_grid(args)
    _placeholders("--metrics-file", args.metrics_file)
    if args.report_only:
        return
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out}: exists and is not a folder")
    used = set()
    for flag, template in (("--train-cmd", train_template(args)),
                           ("--export-cmd", args.export_cmd), ("--eval-cmd", args.eval_cmd)):
        names = _placeholders(flag, template)
        if "config" in names and not args.config:
            raise SweepError(f"{flag} uses {{config}} but no --config is given")
        used |= names
    if args.config:
        _check_config(args)
    if "data" in used:
        _check_data(args)


# ------------------------------------------------------------------------ cells
def train_template(args) -> str:
    if args.train_cmd == DEFAULT_TRAIN and not args.config:
        return DEFAULT_TRAIN.replace(" --config {config}", "")
    return args.train_cmd


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


def placeholder_values(args, k, lbd, seed, run_dir) -> dict:
    return dict(k=k, lbd=f"{lbd:g}", seed=seed, run_dir=run_dir, config=args.config,
                data=args.data, task=args.task, python=sys.executable,
                pretrain=ROOT / "pretrain.py")


def render(template: str, **values) -> str:
    return template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})


def metrics_path(args, k, lbd, seed, run_dir) -> Path:
    return Path(args.metrics_file.format(**placeholder_values(args, k, lbd, seed, run_dir)))


def _read_metrics(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_cell(args, k, lbd, seed, run_dir: Path) -> bool:
    """Run the missing steps of one cell; True when its metrics file exists afterwards."""
    values = placeholder_values(args, k, lbd, seed, run_dir)
    metrics = metrics_path(args, k, lbd, seed, run_dir)
    if _read_metrics(metrics) is not None:
        print(f"[sweep] done   {run_dir}")
        return True
    steps = [("train", train_template(args)), ("export", args.export_cmd),
             ("eval", args.eval_cmd)]
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
            rc = subprocess.run(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env()).returncode
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
        m = _read_metrics(metrics_path(args, k, lbd, seed, run_dir))
        if m is None:
            continue
        if name == "baseline":
            baseline[seed] = m
        else:
            grid.setdefault((k, lbd), {})[seed] = m
    return grid, baseline


def report(args) -> tuple:
    """Write the report files; ``(table, [paths written])``."""
    metrics = list(TASK_METRICS[args.task])
    primary = args.metric or metrics[-1]
    grid, baseline = collect(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = stats.sweep_table(grid, baseline or None, metrics, primary,
                              title=f"{args.task} sweep ({Path(args.data).name or 'eval'})")
    written = [out / "results.md", out / "results.json"]
    written[0].write_text(table)
    raw = {"primary": primary, "baseline": {str(s): m for s, m in baseline.items()},
           "cells": [{"k": k, "lbd": lbd, "seeds": {str(s): m for s, m in v.items()},
                      **stats.cell_summary(v, primary, baseline or None)}
                     for (k, lbd), v in sorted(grid.items())]}
    written[1].write_text(json.dumps(raw, indent=2, default=str) + "\n")
    if grid:
        stats.plot_heatmap(grid, primary, str(out / "heatmap.png"), baseline or None)
        written.append(out / "heatmap.png")
    return table, written


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_inputs(args)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.report_only and not any(collect(args)):
        print(f"error: --report-only: no finished cell under {args.out} (no metrics files "
              f"at {args.metrics_file})", file=sys.stderr)
        return 2
    failed = []
    if not args.report_only:
        for name, k, lbd, seed, run_dir in cells(args):
            if not run_cell(args, k, lbd, seed, run_dir):
                failed.append(run_dir)
                if args.fail_fast:
                    break
    if args.dry_run:
        return 0
    table, written = report(args)
    print(table)
    note = "" if any(p.name == "heatmap.png" for p in written) else \
        " (no heatmap: no LLM-JEPA cell has finished)"
    print(f"[sweep] report: {', '.join(map(str, written))}{note}")
    if failed:
        print(f"[sweep] {len(failed)} cell(s) failed: " + ", ".join(map(str, failed)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
