#!/usr/bin/env python3
"""The paper's Table 1 as (arm, seed) cells: train, evaluate, append one line per finished run.

    python scripts/table1.py --config configs/nlrx_table1_tiny.yaml --store <store> \\
        --test <nlrx_synth_test.jsonl> --seeds 0,1,2,3,4 --out runs/table1 \\
        --results docs/results/table1_runs.jsonl --tag cpu-tiny \\
        --arm "next-token=--lambda 0" --arm "llm-jepa=" --arm "llm-jepa+sigreg=--jepa.sigreg 0.1"

An arm is ``NAME=FLAGS``: pretrain.py flags added to ``--config`` (empty: the config as it
is). The first arm is the baseline of the paired tests. Each cell runs in
``<out>/<tag>/<arm>/seed<S>/``::

    pretrain.py --config C --data.train STORE --data.eval TEST --seed S --run-dir RUN
                --resume auto --train.final_eval false [--train-flags] [arm flags]
    python -m megajepa.eval --model RUN/export --data TEST --task nlrx --out RUN/eval
                [--system-in-plain when the store was built with it]

(``--template chat`` when the config trains on the chat template) and then appends to
``--results`` (JSONL, meant to be committed) one line: the tag, arm, seed, flags, the eval
metrics (exact, startswith, semantic, n), the run's steps, examples and tokens, its final
training losses, the last held-out collapse metrics (``eval/*``), the train and eval wall
seconds, the device and the git commit.

``--curve-limit N`` adds the overfitting curve (the paper's Figure 5): the cell's training
keeps a checkpoint and runs the held-out collapse eval at the end of every epoch
(``--train.save_every``, ``--train.eval_every`` = the steps of one epoch, planned by the
training loader; ``--train.keep_checkpoints`` = the epochs + 2, so that the stop checkpoints of
two interruptions do not push out an epoch's), each earlier epoch's checkpoint
is evaluated on the first N test pairs, the last epoch's point is the final eval's first N
predictions, and the line gets ``curve``: per epoch the accuracies and that epoch's collapse
metrics. ``--prune`` deletes a finished cell's ``checkpoints/`` once its line is written. A cell whose
``(tag, arm, seed)`` is already in ``--results`` is skipped, and an interrupted cell
resumes (training from its latest checkpoint, ``--resume auto``), so rerunning the same
command continues where the time ran out. ``--report`` prints the table of a tag (mean ±
sample std per arm, one-tailed paired t-tests against the baseline, collapse metrics, train
hours) from ``--results`` alone. Every input is checked before the first cell: a problem is
one ``error:`` line and exit 2, with nothing run or written.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_tools.errors import DataError, run_cli  # noqa: E402
from data_tools.readers import iter_jsonl  # noqa: E402
from megajepa import stats  # noqa: E402
from megajepa.cli import (HelpFormatter, child_env, glue_pass_through, must_exist,  # noqa: E402
                          output_dir, positive_int)

METRICS = ("exact", "startswith", "semantic")
COLLAPSE = ("paired_cos", "shuffled_cos", "code_code_cos", "pred_pred_cos", "eff_rank_code",
            "eff_rank_pred")
_lock = threading.Lock()


def _seeds(text: str) -> list:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _arm(text: str) -> tuple:
    name, sep, flags = text.partition("=")
    if not sep or not name or not all(c.isalnum() or c in "-_+." for c in name):
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS with NAME of letters, digits and "
                                         f"-_+. , got {text!r}")
    try:
        return name, shlex.split(flags)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"arm {name}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/table1.py", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--config", help="training config YAML (e.g. configs/nlrx_table1_tiny.yaml)")
    p.add_argument("--store", help="tokenized training store (data.train)")
    p.add_argument("--test", help="held-out chat JSONL: the training-time held-out eval and the "
                                  "accuracy eval")
    p.add_argument("--arm", type=_arm, action="append", default=[],
                   help="NAME=FLAGS, repeatable; the first is the baseline of the t-tests")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4], help="comma list")
    p.add_argument("--tag", required=True,
                   help="experiment name: a cell is (tag, arm, seed) in --results")
    p.add_argument("--out", default="runs/table1", help="run folders: <out>/<tag>/<arm>/seed<S>")
    p.add_argument("--results", required=True, help="JSONL the finished runs are appended to")
    p.add_argument("--train-flags", default="", help="pretrain.py flags for every arm (before "
                                                     "the arm's own)")
    p.add_argument("--launcher", default=sys.executable,
                   help="what runs pretrain.py, e.g. 'deepspeed --num_gpus 8'")
    p.add_argument("--jobs", type=positive_int, default=1, help="cells run at the same time")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="eval generation cap")
    p.add_argument("--batch-size", type=positive_int, default=64, help="eval prompts per generate call")
    p.add_argument("--limit", type=positive_int, default=None, help="eval on the first N test pairs")
    p.add_argument("--device", default=None, help="eval device (default: cuda if available)")
    p.add_argument("--curve-limit", type=positive_int, default=None,
                   help="held-out accuracy after every epoch on the first N test pairs, and the "
                        "collapse metrics at each epoch end (needs train.epochs and "
                        "data.micro_batch_examples)")
    p.add_argument("--prune", action="store_true",
                   help="delete a finished cell's checkpoints/ after its line is written (the "
                        "export stays)")
    p.add_argument("--report", action="store_true",
                   help="print the tag's table from --results; run nothing")
    p.add_argument("--report-out", default=None, help="also write the table to this file")
    p.add_argument("--plot", default=None,
                   help="with --report: a PNG of the held-out collapse metrics (paired and "
                        "shuffled cosine, effective rank of Enc(Code)) against the step, per arm "
                        "(mean over the seeds' run folders in --out)")
    p.add_argument("--baseline", default=None,
                   help="arm the report's t-tests compare against (default: the first arm of the tag)")
    return p


# ----------------------------------------------------------------------------- cells

def _read_jsonl(path) -> list:
    return [obj for _, obj in iter_jsonl(str(path))] if os.path.exists(path) else []


def done_cells(path, tag: str) -> set:
    return {(r["arm"], r["seed"]) for r in _read_jsonl(path) if r.get("tag") == tag}


def _append(path, record: dict) -> None:
    """One line, under an exclusive lock (several drivers may share a results file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _lock, open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)


def _system_in_plain(store: str) -> bool:
    with open(os.path.join(store, "manifest.json")) as fh:
        return bool(json.load(fh).get("source", {}).get("system_in_plain", False))


def cell_config(args, flags: list):
    """The training config of a cell (``--config``, ``--train-flags``, the arm's flags)."""
    from megajepa.config import load
    return load(["--config", args.config, "--data.train", args.store,
                 *shlex.split(args.train_flags), *flags])


def epoch_steps(cfg, store: str) -> int:
    """Optimizer steps of one epoch, planned by the training loader itself; the curve needs
    every epoch the same length (an examples budget, ``data.micro_batch_examples``)."""
    from types import SimpleNamespace

    from data_tools.store import open_store
    from data_tools.tokenizer import load_tokenizer, pred_ids
    from megajepa.loader import budget_steps
    from megajepa.train import make_loader

    if not cfg.train.epochs or not cfg.data.micro_batch_examples:
        raise DataError("--curve-limit needs an epoch budget (train.epochs) and an examples "
                        "budget (data.micro_batch_examples) in the cell's config")
    st = open_store(store)
    tok, _ = load_tokenizer(st.tokenizer_path)
    data = SimpleNamespace(train_store=st, pred_ids=pred_ids(tok), pad_id=tok.pad_token_id)
    loader = make_loader(cfg, data, 0, 1)
    one = budget_steps(loader, steps=0, epochs=1, grad_accum=cfg.optim.grad_accum)
    if budget_steps(loader, steps=0, epochs=cfg.train.epochs, grad_accum=cfg.optim.grad_accum) \
            != one * cfg.train.epochs:
        raise DataError(f"--curve-limit: the epochs of {store} differ in optimizer steps "
                        "(optim.grad_accum does not divide an epoch's micro-batches)")
    return one


def eval_argv(args, cfg, model: Path, out: Path, limit=None) -> list:
    ev = [sys.executable, "-m", "megajepa.eval", "--model", str(model), "--data", args.test,
          "--task", "nlrx", "--out", str(out), "--max-new-tokens", str(args.max_new_tokens),
          "--batch-size", str(args.batch_size)]
    if cfg.data.template == "chat":
        ev += ["--template", "chat"]
    elif _system_in_plain(args.store):
        ev.append("--system-in-plain")
    if limit:
        ev += ["--limit", str(limit)]
    if args.device:
        ev += ["--device", args.device]
    return ev


def commands(args, flags: list, seed: int, run_dir: Path, cfg=None, spe: int = 0) -> tuple:
    """``(train argv, eval argv)`` of one cell (``spe``: steps per epoch, for the curve)."""
    cfg = cfg or cell_config(args, flags)
    # every epoch's checkpoint, plus room for two interruptions' stop checkpoints
    curve = (["--train.save_every", str(spe), "--train.eval_every", str(spe),
              "--train.keep_checkpoints", str(cfg.train.epochs + 2)] if spe else [])
    train = shlex.split(args.launcher) + [
        str(ROOT / "pretrain.py"), "--config", args.config, "--data.train", args.store,
        "--data.eval", args.test, "--seed", str(seed), "--run-dir", str(run_dir), "--resume", "auto",
        "--train.final_eval", "false", *curve, *shlex.split(args.train_flags), *flags]
    return train, eval_argv(args, cfg, run_dir / "export", run_dir / "eval", args.limit)


def _run(argv: list, log: Path) -> float:
    start = time.time()
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        fh.flush()
        rc = subprocess.run(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=child_env()).returncode
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {shlex.join(argv)} (see {log})")
    return time.time() - start


def _last(rows: list, key: str) -> dict:
    return next((r for r in reversed(rows) if key in r), {})


def _device() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - a label only
        pass
    return f"cpu ({os.cpu_count()} cores)"


def _commit() -> str:
    p = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip()


def curve_points(args, cfg, run_dir: Path, spe: int, log: Path, times: dict) -> list:
    """Per epoch: accuracy on the first ``--curve-limit`` test pairs (earlier epochs: their
    checkpoint, evaluated once into ``epoch<E>/``; the last: the final eval's first rows) and
    the held-out collapse metrics logged at that epoch's last step."""
    from megajepa.checkpoint import tag_for
    from megajepa.eval import tasks

    rows = _read_jsonl(run_dir / "metrics.jsonl")
    points = []
    for e in range(1, cfg.train.epochs + 1):
        step = e * spe
        if e < cfg.train.epochs:
            out = run_dir / f"epoch{e}"
            if not (out / "metrics.json").exists():
                print(f"[table1] curve {run_dir} epoch {e}", flush=True)
                times["curve_s"] = times.get("curve_s", 0.0) + _run(
                    eval_argv(args, cfg, run_dir / "checkpoints" / tag_for(step), out,
                              args.curve_limit), log)
                (run_dir / "times.json").write_text(json.dumps(times))
            acc = json.loads((out / "metrics.json").read_text())
        else:
            acc = tasks.aggregate(_read_jsonl(run_dir / "eval" / "predictions.jsonl")[:args.curve_limit],
                                  "nlrx")
        held = next((r for r in rows if r.get("step") == step and "eval/paired_cos" in r), {})
        points.append({"epoch": e, "step": step, **{m: acc[m] for m in METRICS}, "n": acc["n"],
                       "eval_lm_loss": held.get("eval/lm_loss"),
                       **{k: held.get(f"eval/{k}") for k in COLLAPSE}})
    return points


def run_cell(args, arm: str, flags: list, seed: int) -> dict:
    """Train (or resume), evaluate and describe one cell; the record appended to --results."""
    run_dir = Path(args.out) / args.tag / arm / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cell_config(args, flags)
    spe = epoch_steps(cfg, args.store) if args.curve_limit else 0
    train, ev = commands(args, flags, seed, run_dir, cfg, spe)
    log = run_dir / "cell.log"
    timing = run_dir / "times.json"
    times = json.loads(timing.read_text()) if timing.exists() else {}
    if not (run_dir / "export" / "config.json").exists() or "train_s" not in times:
        print(f"[table1] train {args.tag}/{arm}/seed{seed}", flush=True)
        times["train_s"] = times.get("train_s", 0.0) + _run(train, log)
        timing.write_text(json.dumps(times))
    print(f"[table1] eval  {args.tag}/{arm}/seed{seed}", flush=True)
    eval_s = _run(ev, log)
    acc = json.loads((run_dir / "eval" / "metrics.json").read_text())
    curve = curve_points(args, cfg, run_dir, spe, log, times) if spe else None
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    last, held = _last(rows, "loss"), _last(rows, "eval/paired_cos")
    record = {
        "tag": args.tag, "arm": arm, "seed": seed, "flags": shlex.join(flags),
        "config": args.config, "train_flags": args.train_flags, "test": os.path.basename(args.test),
        **{m: acc[m] for m in METRICS}, "n": acc["n"], "regex_errors": acc.get("regex_errors"),
        "steps": last.get("step"), "examples": last.get("examples"), "tokens": last.get("tokens"),
        "lm_loss": last.get("lm_loss"), "jepa_loss": last.get("jepa_loss"),
        "sigreg": last.get("sigreg"), "eval_lm_loss": held.get("eval/lm_loss"),
        "collapse_step": held.get("step"), **{k: held.get(f"eval/{k}") for k in COLLAPSE},
        "train_s": round(times["train_s"], 1), "eval_s": round(eval_s, 1), "device": _device(),
        "commit": _commit(), "date": datetime.date.today().isoformat(),
    }
    if curve is not None:
        record.update(curve=curve, curve_s=round(times.get("curve_s", 0.0), 1))
    _append(args.results, record)
    if args.prune:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    print(f"[table1] done  {args.tag}/{arm}/seed{seed}: exact {record['exact']:.4f} "
          f"semantic {record['semantic']:.4f}", flush=True)
    return record


# ---------------------------------------------------------------------------- report

def _fmt(values, scale=100.0, digits=2) -> str:
    mean, std = stats.mean_std([v * scale for v in values])
    if mean != mean:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std != std else f" ± {std:.{digits}f}")


def report(records: list, tag: str, baseline: str | None = None) -> str:
    """Markdown table of one tag: accuracy (%), paired one-tailed p against the baseline arm
    (H1 arm > baseline, and the reverse for semantic), collapse metrics, train hours."""
    rows = [r for r in records if r.get("tag") == tag]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    if not arms:
        return f"no finished runs with tag {tag!r}\n"
    if baseline and baseline not in arms:
        raise DataError(f"--baseline {baseline}: no such arm in tag {tag!r} (arms: {', '.join(arms)})")
    base = baseline or arms[0]
    by = {a: {r["seed"]: r for r in rows if r["arm"] == a} for a in arms}
    head = ("| arm | seeds | exact | startswith | semantic | p exact | p startswith | p semantic "
            "| p reverse (semantic) | paired cos | shuffled cos | eff. rank code | eff. rank pred "
            "| train h (sum) | train min / run | eval min / run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def p_value(arm, metric, reverse=False):
        if arm == base:
            return ""
        x = {s: r[metric] for s, r in by[arm].items()}
        y = {s: r[metric] for s, r in by[base].items()}
        _, p, _ = stats.paired_ttest_greater(*((y, x) if reverse else (x, y)))
        return "n/a" if p != p else f"{p:.3g}"

    for a in arms:
        cell = by[a]
        vals = {m: [r[m] for r in cell.values()] for m in METRICS}
        ps = [p_value(a, m) for m in METRICS] + [p_value(a, "semantic", reverse=True)]
        col = [_fmt([r[k] for r in cell.values() if r.get(k) is not None], 1.0, 3) for k in COLLAPSE
               if k not in ("code_code_cos", "pred_pred_cos")]
        hours = sum(r["train_s"] for r in cell.values()) / 3600
        minutes = [_fmt([r["train_s"] / 60 for r in cell.values()], 1.0, 1),
                   _fmt([(r["eval_s"] + r.get("curve_s", 0.0)) / 60 for r in cell.values()], 1.0, 1)]
        lines.append(f"| {a} | {len(cell)} | " + " | ".join(_fmt(vals[m]) for m in METRICS) + " | "
                     + " | ".join(ps) + " | " + " | ".join(col) + f" | {hours:.2f} | "
                     + " | ".join(minutes) + " |")
    lines.append("")
    lines.append(f"Tag {tag}; baseline {base}; accuracy in % of the test pairs (mean ± sample std "
                 "over seeds); p: one-tailed paired t-test by seed (H1 arm > baseline; reverse: "
                 "H1 baseline > arm); collapse metrics from the last training-time held-out eval; "
                 "wall minutes per run (mean ± std): training (with its held-out evals and "
                 "checkpoints), and generation evals (final, plus the curve's).")
    curve = curve_report(rows, arms)
    return "\n".join(lines) + "\n" + (f"\n{curve}" if curve else "")


def curve_report(rows: list, arms: list) -> str:
    """Markdown table of the per-epoch points (``--curve-limit``): accuracy (%) and collapse
    metrics, mean ± sample std over the seeds that have the curve."""
    with_curve = [r for r in rows if r.get("curve")]
    if not with_curve:
        return ""
    head = ("| arm | epoch | seeds | exact | startswith | semantic | held-out LM loss | paired cos "
            "| shuffled cos | eff. rank code | eff. rank pred |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    n = sorted({p["n"] for r in with_curve for p in r["curve"]})
    for a in arms:
        points = {}
        for r in with_curve:
            if r["arm"] == a:
                for p in r["curve"]:
                    points.setdefault(p["epoch"], []).append(p)
        for e in sorted(points):
            ps = points[e]

            def col(key, scale=1.0, digits=3):
                return _fmt([p[key] for p in ps if p.get(key) is not None], scale, digits)
            lines.append(f"| {a} | {e} | {len(ps)} | " + " | ".join(col(m, 100.0, 2) for m in METRICS)
                         + " | " + " | ".join(col(k) for k in ("eval_lm_loss", "paired_cos",
                                                               "shuffled_cos", "eff_rank_code",
                                                               "eff_rank_pred")) + " |")
    lines.append("")
    lines.append(f"After each epoch: accuracy in % of the first {'/'.join(map(str, n))} test pairs; "
                 "held-out LM loss and collapse metrics from the training-time held-out eval "
                 "at that epoch's last step (mean ± sample std over seeds).")
    return "\n".join(lines) + "\n"


def plot_collapse(out: str, tag: str, arms: list, path: str) -> None:
    """Held-out ``eval/paired_cos``, ``eval/shuffled_cos`` and ``eval/eff_rank_code`` vs step,
    one colour per arm (mean over its seeds' metrics.jsonl)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("eval/paired_cos", "paired cos"), ("eval/shuffled_cos", "shuffled cos"),
            ("eval/eff_rank_code", "eff. rank Enc(Code)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, arm in enumerate(arms):
        curves = {}
        for run_dir in sorted((Path(out) / tag / arm).glob("seed*")):
            for r in _read_jsonl(run_dir / "metrics.jsonl"):
                if "eval/paired_cos" in r:
                    curves.setdefault(r["step"], []).append(r)
        steps = sorted(curves)
        for ax, (key, label) in zip(axes, keys):
            ax.plot(steps, [np.mean([r[key] for r in curves[s]]) for s in steps], color=f"C{i}", label=arm)
            ax.set_title(label)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# ------------------------------------------------------------------------------ main

def check_inputs(args) -> None:
    if args.report:
        must_exist(args.results, "--results", kind="file")
        return
    for flag in ("config", "store", "test"):
        if not getattr(args, flag):
            raise DataError(f"--{flag} is required to run cells")
    must_exist(args.config, "--config", kind="file")
    must_exist(args.store, "--store", kind="dir")
    must_exist(os.path.join(args.store, "manifest.json"), "--store (manifest.json)", kind="file")
    must_exist(args.test, "--test", kind="file")
    output_dir(args.out)
    if os.path.isdir(args.results):
        raise DataError(f"--results {args.results}: is a directory, expected a JSONL file")
    if not args.arm:
        raise DataError("give at least one --arm NAME=FLAGS")
    names = [a for a, _ in args.arm]
    if len(set(names)) != len(names):
        raise DataError(f"--arm names repeat: {names}")
    if args.curve_limit and args.limit and args.limit < args.curve_limit:
        raise DataError(f"--curve-limit {args.curve_limit} is more than --limit {args.limit}: the "
                        "last epoch's point is read from the final eval")
    _read_jsonl(args.results)  # a corrupt results file is bad input, found now
    try:  # every arm's full flag set loads (unknown flags, bad values) before anything runs
        cfgs = [cell_config(args, flags) for _, flags in args.arm]
    except (ValueError, SystemExit) as e:
        raise DataError(f"arm flags do not load: {e}") from None
    if args.curve_limit:
        for cfg in cfgs:
            epoch_steps(cfg, args.store)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(glue_pass_through(argv, {"--train-flags"}))
    check_inputs(args)
    if args.report:
        table = report(_read_jsonl(args.results), args.tag, args.baseline)
        print(table, end="")
        if args.report_out:
            Path(args.report_out).write_text(table)
        if args.plot:
            arms = list(dict.fromkeys(r["arm"] for r in _read_jsonl(args.results) if r.get("tag") == args.tag))
            plot_collapse(args.out, args.tag, arms, args.plot)
        return 0
    done = done_cells(args.results, args.tag)
    todo = [(a, f, s) for s in args.seeds for a, f in args.arm if (a, s) not in done]
    for a, _, s in [(a, f, s) for s in args.seeds for a, f in args.arm if (a, s) in done]:
        print(f"[table1] skip  {args.tag}/{a}/seed{s} (in {args.results})")
    failed = []

    def one(cell):
        try:
            run_cell(args, *cell)
        except RuntimeError as e:
            print(f"[table1] FAILED {args.tag}/{cell[0]}/seed{cell[2]}: {e}", file=sys.stderr, flush=True)
            failed.append(cell)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    print(report(_read_jsonl(args.results), args.tag), end="")
    if failed:
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
