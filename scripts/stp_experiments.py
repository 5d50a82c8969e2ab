#!/usr/bin/env python3
"""STP vs next-token at CPU scale (docs/results.md, "Semantic Tube Prediction"): data, runs,
evaluation and the report, resumable, at most ``--jobs`` runs at a time.

    python scripts/stp_experiments.py nlrx --train <nlrx_synth_train.jsonl> --test <nlrx_synth_test.jsonl> --out runs/stp/nlrx
    python scripts/stp_experiments.py text --train <rotten_tomatoes_train.jsonl> --test <rotten_tomatoes_test.jsonl> --out runs/stp/text
    python scripts/stp_experiments.py nlrx ... --report-only            # the tables from finished runs

Both experiments train the tiny preset from scratch for ``--steps`` steps of the same packed
rows (seq_len 256 x 8 rows; STP adds no tokens) in every arm, for every seed::

    <out>/next_token/seed<S>/    --lambda 0 (next-token only)
    <out>/stp_l<L>/seed<S>/      --jepa.objective stp --lambda L  (one span per document,
                                 the reference's start sampler, no maximum, no weighting)

``nlrx``: chat pairs (description -> regex) as a pair store; eval: greedy generation on the
test pairs, ``python -m megajepa.eval --task nlrx`` (exact, startswith, semantic), and
``scripts/heldout_loss.py`` on the test pairs as a store (next-token loss on the regex tokens,
STP cosine; ``eval/heldout.json``, filled in for finished runs on a rerun).
``text``: the ``user`` text of each chat record (the review, read with data_tools' readers)
as a plain-text corpus, one document per line, an ``lm`` store (``--max-doc-tokens 256``);
eval: ``scripts/heldout_loss.py`` on the held-out texts: next-token loss per token
(``val_loss``) and the STP cosine there (``val_stp_cosine``, one span per document, seed 0). A run is finished when its ``eval/metrics.json``
exists; reruns skip finished runs (and a trained run's training). Writes ``<out>/report.md``:
mean ± sample std per arm, one-tailed paired t-tests by seed (``megajepa.stats``) of "arm
better than next-token" and of the reverse.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megajepa import stats  # noqa: E402

SEQ_LEN, ROWS = 256, 8
METRICS = {"nlrx": [("exact", "higher"), ("startswith", "higher"), ("semantic", "higher"),
                    ("val_loss", "lower"), ("val_stp_cosine", "higher")],
           "text": [("val_loss", "lower"), ("val_stp_cosine", "higher")]}
PERCENT = {"exact", "startswith", "semantic"}
VOCAB = {"nlrx": 512, "text": 1000}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Layout, arms and metrics: see the module docstring.")
    p.add_argument("experiment", choices=("nlrx", "text"))
    p.add_argument("--train", required=True, help="training chat-messages JSONL")
    p.add_argument("--test", required=True, help="held-out chat-messages JSONL")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs, data, report.md)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma list (default 0,1,2,3,4)")
    p.add_argument("--lambdas", default="0.02,0.1",
                   help="STP weights, one arm each (default 0.02,0.1: the reference's NL-RX "
                        "setting in run_stp.sh and stp.py's default)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (default 1000)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
        args.lambdas = [float(x) for x in args.lambdas.split(",") if x]
    except ValueError as e:
        p.error(f"--seeds/--lambdas: {e}")
    for path in (args.train, args.test):
        if not os.path.isfile(path):
            p.error(f"{path}: no such file")
    if args.steps < 1 or args.jobs < 1 or not args.seeds or any(x <= 0 for x in args.lambdas):
        p.error("--steps, --jobs >= 1; at least one seed; lambdas > 0")
    return args


def sh(cmd, log: Path | None = None):
    """Run ``cmd`` (one thread per process: the CPU is shared); its output to ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if log is None:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        return
    with open(log, "w") as fh:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=fh, stderr=subprocess.STDOUT)


def write_texts(chat_jsonl: str, out: Path) -> int:
    """The ``user`` text of every chat record, one document per line (newlines -> spaces)."""
    from data_tools.readers import read_records

    n = 0
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for rec in read_records(chat_jsonl, fmt="chat"):
            fh.write(" ".join(rec.data["user"].split()) + "\n")
            n += 1
    os.replace(tmp, out)
    return n


def prepare(args) -> dict:
    """Tokenizer and stores under ``<out>/data`` (skipped when present)."""
    d = args.out / "data"
    d.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    train, test = args.train, args.test
    if args.experiment == "text":
        train, test = d / "train.txt", d / "test.txt"
        for src, dst in ((args.train, train), (args.test, test)):
            if not dst.exists():
                write_texts(src, dst)
    tok, store, test_store = d / "tok", d / "store", d / "test_store"
    if not (tok / "tokenizer.json").exists():
        sh([py, "-m", "data_tools.train_tokenizer", str(train), "--out", str(tok), "--vocab-size",
            str(VOCAB[args.experiment]), "--model", "bpe", "--k-pred", "8", "--overwrite"])
    split = ["--max-doc-tokens", str(SEQ_LEN)] if args.experiment == "text" else []
    for src, dst in ((train, store), (test, test_store)):
        if not (dst / "manifest.json").exists():
            sh([py, "-m", "data_tools.preprocess", str(src), "--tokenizer", str(tok), "--out",
                str(dst), "--overwrite"] + split)
    return {"store": store, "test_store": test_store}


def arms(args) -> list:
    return [("next_token", ["--lambda", "0"])] + [
        (f"stp_l{lbd:g}", ["--jepa.objective", "stp", "--lambda", f"{lbd:g}"]) for lbd in args.lambdas]


def train_cmd(args, data, run: Path, seed: int, flags: list) -> list:
    return [sys.executable, "pretrain.py", "--preset", "tiny", "--data.train", str(data["store"]),
            "--data.seq_len", str(SEQ_LEN), "--data.micro_batch_rows", str(ROWS), "--lr", "1e-3",
            "--steps", str(args.steps), "--train.log_every", "10", "--train.save_every", "100000",
            "--train.final_eval", "false", "--seed", str(seed), "--run-dir", str(run),
            "--resume", "auto"] + flags


def heldout_cmd(run: Path, store: Path, out: Path) -> list:
    return [sys.executable, "scripts/heldout_loss.py", "--model", str(run / "export"), "--data",
            str(store), "--seq-len", str(SEQ_LEN), "--out", str(out)]


def one_run(args, data, arm: str, flags: list, seed: int) -> str:
    run = args.out / arm / f"seed{seed}"
    metrics = run / "eval" / "metrics.json"
    heldout = run / "eval" / "heldout.json"  # nlrx: held-out loss on the test pairs' code tokens
    if metrics.exists():
        if args.experiment == "nlrx" and not heldout.exists():
            sh(heldout_cmd(run, data["test_store"], heldout), run / "heldout.log")
        return f"{arm} seed {seed}: done before"
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (run / "export" / "config.json").exists():
        sh(train_cmd(args, data, run, seed, flags), run / "train_stdout.log")
    t1 = time.time()
    (run / "eval").mkdir(exist_ok=True)
    if args.experiment == "nlrx":
        sh([sys.executable, "-m", "megajepa.eval", "--model", str(run / "export"), "--data", args.test,
            "--task", "nlrx", "--out", str(run / "eval"), "--max-new-tokens", "64", "--device", "cpu"],
           run / "eval.log")
        sh(heldout_cmd(run, data["test_store"], heldout), run / "heldout.log")
    else:
        sh(heldout_cmd(run, data["test_store"], metrics), run / "eval.log")
    m = json.loads(metrics.read_text())
    m.update(train_s=round(t1 - t0, 1), eval_s=round(time.time() - t1, 1))
    metrics.write_text(json.dumps(m, indent=2))
    return f"{arm} seed {seed}: train {t1 - t0:.0f}s eval {time.time() - t1:.0f}s"


def train_tail(run: Path, steps: int) -> tuple:
    """Mean training next-token loss and cosine over the logged steps of the last 100."""
    rows = [json.loads(line) for line in open(run / "metrics.jsonl") if line.strip()]
    tail = [r for r in rows if "lm_loss" in r and r["step"] > steps - 100]
    mean = lambda key: stats.mean_std([r[key] for r in tail if r.get(key) is not None])[0]  # noqa: E731
    return mean("lm_loss"), mean("cosine")


def report(args) -> str:
    """Markdown: mean ± std per arm and metric, paired one-tailed p-values, per-run rows."""
    names = [a for a, _ in arms(args)]
    res = {a: {} for a in names}
    for a in names:
        for s in args.seeds:
            f = args.out / a / f"seed{s}" / "eval" / "metrics.json"
            if f.exists():
                res[a][s] = json.loads(f.read_text())
                h = f.with_name("heldout.json")
                if args.experiment == "nlrx" and h.exists():
                    held = json.loads(h.read_text())
                    res[a][s].update(val_loss=held["val_loss"], val_stp_cosine=held["val_stp_cosine"])
    mets = METRICS[args.experiment]

    def fmt(m, v):
        return "" if v is None else f"{100 * v:.2f}" if m in PERCENT else f"{v:.4f}"

    head = ["arm", "seeds"] + [f"{m} ({'%, ' if m in PERCENT else ''}{d} is better)" for m, d in mets]
    head += [f"p {m} better" for m, _ in mets] + [f"p {m} worse" for m, _ in mets]
    rows, base = [], res["next_token"]
    for a in names:
        row = [a, str(len(res[a]))]
        for m, _ in mets:
            mean, std = stats.mean_std([r[m] for r in res[a].values() if m in r])
            row.append(f"{fmt(m, mean)} ± {fmt(m, std) if std == std else 'n/a'}")
        ps = {"better": [], "worse": []}
        for m, d in mets:
            arm_v = {s: r[m] for s, r in res[a].items() if m in r}
            base_v = {s: r[m] for s, r in base.items() if m in r}
            hi, lo = (arm_v, base_v) if d == "higher" else (base_v, arm_v)
            ps["better"].append(stats.paired_ttest_greater(hi, lo)[1] if a != "next_token" else None)
            ps["worse"].append(stats.paired_ttest_greater(lo, hi)[1] if a != "next_token" else None)
        row += ["" if p is None else f"{p:.3g}" for p in ps["better"] + ps["worse"]]
        rows.append(row)
    lines = stats.markdown_table(head, rows).split("\n")
    lines += ["", "| arm | seed | " + " | ".join(m for m, _ in mets)
              + " | train lm_loss, last 100 steps | train STP cosine, last 100 steps | train s | eval s |",
              "|" + "---|" * (len(mets) + 6)]
    for a in names:
        for s, r in sorted(res[a].items()):
            lm, cos = train_tail(args.out / a / f"seed{s}", args.steps)
            lines.append(f"| {a} | {s} | " + " | ".join(fmt(m, r.get(m)) for m, _ in mets)
                         + f" | {lm:.4f} | {'' if a == 'next_token' else f'{cos:.4f}'}"
                         + f" | {r.get('train_s', '')} | {r.get('eval_s', '')} |")
    text = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        data = prepare(args)
        jobs = [(a, f, s) for s in args.seeds for a, f in arms(args)]  # seed-major: pairs finish together
        failed = 0
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(one_run, args, data, a, f, s) for a, f, s in jobs]
            for fut, (a, _, s) in zip(futures, jobs):
                try:
                    print(fut.result(), flush=True)
                except subprocess.CalledProcessError as e:
                    failed += 1
                    print(f"{a} seed {s}: FAILED ({e}); see its logs under {args.out / a}", flush=True)
    print(report(args), end="")
    return 1 if not args.report_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
