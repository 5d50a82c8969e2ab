"""Compare generated NL-RX-style pairs with a real NL-RX chat JSONL (vocabulary, lengths, operators).

    python -m data_tools.compare_nlrx data/nlrx_synth_train.jsonl --n 8000 --seed 0

Prints a Markdown table (used in docs/data.md).
"""
from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys

from . import cli, nlrx, readers
from .errors import DataError, run_cli

OPERATORS = {"&": r"&", "~": r"~", "|": r"\|", "{n,}": r"\{\d+,\}", "+": r"\)\+", "*": r"\)\*", ".*": r"\.\*",
             "\\b": r"\\b", "[A-Za-z]": r"\[A-Za-z\]", "[A-Z]": r"\[A-Z\]", "[a-z]": r"\[a-z\]",
             "[0-9]": r"\[0-9\]", "[AEIOUaeiou]": r"\[AEIOUaeiou\]"}


def stats(pairs):
    words = [d.split() for d, _ in pairs]
    vocab = collections.Counter(w.strip(",") for ws in words for w in ws)
    ops = {name: sum(len(re.findall(rx, r)) for _, r in pairs) / len(pairs) for name, rx in OPERATORS.items()}
    return dict(n=len(pairs), vocab=vocab, desc_words=[len(w) for w in words], regex_chars=[len(r) for _, r in pairs],
                ops=ops, unique_regex=len({r for _, r in pairs}))


def _dist(xs):
    q = statistics.quantiles(xs, n=10)
    return f"{statistics.mean(xs):.1f} / {q[0]:.0f} / {statistics.median(xs):.0f} / {q[-1]:.0f} / {max(xs)}"


def table(real, gen) -> str:
    rv, gv = set(real["vocab"]), set(gen["vocab"])
    real_tokens = sum(real["vocab"].values())
    covered = sum(c for w, c in real["vocab"].items() if w in gv) / real_tokens
    lines = ["| measure | real | generated |", "|---|---|---|",
             f"| records / unique regexes | {real['n']} / {real['unique_regex']} | {gen['n']} / {gen['unique_regex']} |",
             f"| description vocabulary (word types) | {len(rv)} | {len(gv)} |",
             f"| shared word types | {len(rv & gv)} | |",
             f"| real word tokens covered by generated vocabulary | {100 * covered:.1f}% | |",
             f"| description words: mean / p10 / median / p90 / max | {_dist(real['desc_words'])} | {_dist(gen['desc_words'])} |",
             f"| regex chars: mean / p10 / median / p90 / max | {_dist(real['regex_chars'])} | {_dist(gen['regex_chars'])} |"]
    for name in OPERATORS:
        lines.append(f"| `{name}` per regex | {real['ops'][name]:.2f} | {gen['ops'][name]:.2f} |")
    only_real = sorted(rv - gv)
    lines.append(f"| real-only word types | {', '.join(only_real) or '-'} | |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("compare_nlrx", __doc__)
    p.add_argument("real", help="real NL-RX chat JSONL (e.g. from python -m data_tools.get_nlrx)")
    p.add_argument("--n", type=int, default=8000, help="generated pairs (default 8000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.n < 2:
        raise DataError(f"--n must be >= 2, got {a.n}")
    real = [(r.data["user"], r.data["assistant"]) for r in readers.read_records(a.real, fmt="chat")]
    gen = [(r["description"], r["regex"]) for r in nlrx.generate_pairs(a.n, a.seed)]
    print(table(stats(real), stats(gen)))


if __name__ == "__main__":
    sys.exit(run_cli(main))
