"""``python -m megajepa.eval``: generate on a held-out JSONL and score it.

Writes ``<out>/predictions.jsonl`` (prompt, reference, prediction, the task's booleans per
record) and ``<out>/metrics.json``, and prints one summary line. Bad input exits with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from data_tools.errors import run_cli
from megajepa.eval import tasks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megajepa.eval",
        description="Greedy generation + task metrics (exact, starts-with, regex semantic "
                    "equivalence, GSM8K answer, SQL execution, first-token label).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder, or a training run / checkpoint directory "
                        "(its export/ folder, else its latest checkpoint exported on the fly)")
    p.add_argument("--data", required=True, help="chat-messages JSONL (system?/user/assistant)")
    p.add_argument("--task", required=True, choices=tasks.TASKS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--db-dir", default=None,
                   help="folder of SQLite databases for --task sql (<db_id>/<db_id>.sqlite)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation length cap")
    p.add_argument("--template", choices=("plain", "chat"), default="plain",
                   help="prompt layout (data_tools.templates): plain = <s> user <sep>")
    p.add_argument("--system-in-plain", action="store_true",
                   help="plain template: prefix the system prompt (as in training)")
    p.add_argument("--limit", type=int, default=None, help="first N records only")
    p.add_argument("--sql-timeout", type=float, default=5.0, help="seconds per SQL query")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
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
    from megajepa.eval.run import NotAModelDirectory, load_model, predict, read_records

    if args.task == "sql" and not args.db_dir:
        raise SystemExit("error: --task sql needs --db-dir")
    records = read_records(args.data, args.limit)
    start = time.time()
    try:
        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    except NotAModelDirectory as e:
        raise SystemExit(f"error: {e}") from None
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
