"""``python -m megajepa.eval``: generate on a held-out JSONL and score it.

Writes ``<out>/predictions.jsonl`` (prompt, reference, prediction, the task's booleans per
record) and ``<out>/metrics.json``, and prints one summary line. Bad input (a missing file
or model, a malformed record, a bad flag value) is one ``error:`` line and exit 2, before any
output is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from data_tools.errors import DataError, run_cli
from megajepa.cli import HelpFormatter, add_template_args, must_exist, output_dir, positive_int
from megajepa.eval import tasks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megajepa.eval",
        description="Greedy generation on held-out (prompt, reference) pairs, scored per task.\n"
                    "Writes <out>/predictions.jsonl (one row per record: prompt, reference,\n"
                    "prediction, the task's per-record booleans) and <out>/metrics.json, and\n"
                    "prints one summary line.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder, or a training run / checkpoint directory "
                        "(its export/ folder, else its latest checkpoint exported on the fly)")
    p.add_argument("--data", required=True, help="chat-messages JSONL (system?/user/assistant)")
    p.add_argument("--task", required=True, choices=tasks.TASKS,
                   help="metrics: " + "; ".join(f"{t}: {', '.join(tasks.METRICS[t])}"
                                                for t in tasks.TASKS))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--db-dir", default=None,
                   help="folder of SQLite databases for --task sql (<db_id>/<db_id>.sqlite)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="prompts per generate call (left-padded, greedy)")
    p.add_argument("--max-new-tokens", type=positive_int, default=128,
                   help="generation length cap (the paper's startswith eval uses 128)")
    add_template_args(p, "prompt layout")
    p.add_argument("--limit", type=positive_int, default=None, help="first N records only")
    p.add_argument("--sql-timeout", type=float, default=5.0, help="seconds per SQL query")
    p.add_argument("--device", default=None, help="cuda or cpu; default: cuda if available")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto = bfloat16 on GPU, float32 on CPU")
    return p


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def summary_line(metrics: dict, seconds: float, out: Path) -> str:
    scores = " ".join(f"{k}={metrics[k]:.4f}" for k in tasks.METRICS[metrics["task"]])
    return f"eval {metrics['task']} n={metrics['n']} {scores} ({seconds:.1f}s) -> {out}"


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    must_exist(args.data, "--data", kind="file")
    must_exist(args.model, "--model")
    output_dir(args.out)
    if args.task == "sql":
        if not args.db_dir:
            raise DataError("--task sql needs --db-dir (the folder of SQLite databases)")
        must_exist(args.db_dir, "--db-dir", kind="dir")
    # here, not at the top: --help and the input checks answer before torch/transformers load
    from megajepa.eval.run import load_model, predict, read_records

    records = read_records(args.data, args.limit)
    start = time.time()
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    rows = predict(model, tokenizer, records, args.task, template=args.template,
                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   db_dir=args.db_dir, sql_timeout_s=args.sql_timeout,
                   system_in_plain=args.system_in_plain)
    metrics = tasks.aggregate(rows, args.task)
    if args.task == "nlrx":
        metrics["regex_errors"] = sum(r.get("regex_error") is not None for r in rows)
    metrics.update(model=str(args.model), data=str(args.data), template=args.template,
                   max_new_tokens=args.max_new_tokens, seconds=round(time.time() - start, 3))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "predictions.jsonl",
                  "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(summary_line(metrics, metrics["seconds"], out / "metrics.json"))
    return metrics


if __name__ == "__main__":
    sys.exit(run_cli(main))
