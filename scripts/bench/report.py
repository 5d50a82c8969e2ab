"""The headline rows of docs/benchmarks.md from the GPU benchmark outputs.

Reads every ``pretrain.json`` (scripts/bench/pretrain.py) and ``anchor*.json``
(scripts/bench/anchor.py) under the given folders (the ``files_at`` of the device calls, or
unpacked ``*-logs.tgz``) and prints the five rows

    | figure | value | device | date | command |

with ``not measured (<why>)`` where an output is missing or a run failed, so the table can be
pasted as is. The anchor's runs may come from two calls (``anchor three`` and
``anchor additive,ours``); their devices are shown when they differ.

    python scripts/bench/report.py <output folder of call 1> <output folder of call 2> ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import markdown_table  # noqa: E402

FIGURES = (
    "MFU pretrain.py llama-3.2-1b seq 4096",
    "MFU pretrain.py llama-3.2-3b seq 4096",
    "single pass / next-token step time, same examples",
    "authors' code / megajepa epoch time, llama-3.2-1b, NL-RX-SYNTH",
    "peak memory GiB pretrain.py llama-3.2-1b seq 4096",
)
COMMANDS = {
    "pretrain": "`bash scripts/bench/gpu.sh pretrain` (scripts/bench/pretrain.py)",
    "anchor": "`bash scripts/bench/gpu.sh anchor three` + `... anchor additive,ours` "
              "(scripts/bench/anchor.py)",
}


def load(folders: list[str]) -> tuple[list[dict], list[dict]]:
    pre, anc = [], []
    for folder in folders:
        root = Path(folder)
        if not root.exists():
            raise FileNotFoundError(f"{folder}: no such folder")
        pre += [json.loads(p.read_text()) for p in sorted(root.rglob("pretrain.json"))]
        anc += [json.loads(p.read_text()) for p in sorted(root.rglob("anchor*.json"))]
    return pre, anc


def _run(reports: list[dict], preset: str, variant: str):
    """The last successful run of ``preset``/``variant`` and its report."""
    found = None
    for rep in reports:
        for r in rep["runs"]:
            if r["preset"] == preset and r["variant"] == variant and r.get("steps"):
                found = (r, rep)
    return found


def rows(pre: list[dict], anc: list[dict]) -> list[tuple]:
    out = []
    cmd = COMMANDS["pretrain"]
    for preset in ("llama-3.2-1b", "llama-3.2-3b"):
        hit = _run(pre, preset, "single")
        if hit and hit[0].get("mfu") is not None:
            r, rep = hit
            out.append((f"{r['mfu']:.2f}", rep["device"], rep["date"],
                        f"{cmd}: {r['steps']} steps after {r['first_step'] - 1}, "
                        f"{r['rows'][0]}x{r['rows'][1]} rows of {rep['seq_len']}, "
                        f"{r['tokens_per_s']:,.0f} tokens/s"))
        else:
            out.append(_missing(pre, cmd, f"no successful {preset} run"))
    one, lm = _run(pre, "llama-3.2-1b", "single"), _run(pre, "llama-3.2-1b", "lm")
    if one and lm and lm[0].get("samples_per_s") and one[0].get("samples_per_s"):
        (r, rep), (q, _) = one, lm
        bound = rep["design"]["bound"]
        ratio = q["tokens_per_s"] / r["tokens_per_s"] * bound
        windows = q["samples_per_s"] / r["samples_per_s"]
        out.append((f"{ratio:.2f} (bound {bound:.2f})", rep["device"], rep["date"],
                    f"{cmd}: time per example on the same examples (time per token x the store's "
                    f"tokens), llama-3.2-1b, bound (|T|+2|C|+k)/(|T|+|C|) from its store; "
                    f"{windows:.2f} over the examples each run's logged windows held"))
    else:
        out.append(_missing(pre, cmd, "needs the llama-3.2-1b single and lm runs"))
    runs = {}
    for rep in anc:
        if rep.get("preset") != "llama-3.2-1b":  # e.g. a --cpu-check at the tiny size
            continue
        for r in rep["runs"]:
            if r.get("ok") and r.get("epoch_s"):
                runs[r["variant"]] = (r, rep)
    if "ours" in runs and ("three" in runs or "additive" in runs):
        ours, rep = runs["ours"]
        parts = [f"{runs[v][0]['epoch_s'] / ours['epoch_s']:.1f} ({v})"
                 for v in ("three", "additive") if v in runs]
        devices = sorted({runs[v][1]["device"] for v in runs})
        dates = sorted({runs[v][1]["date"] for v in runs})
        out.append((", ".join(parts), " / ".join(devices), " / ".join(dates),
                    f"{COMMANDS['anchor']}: {ours['examples']} examples, epoch "
                    + ", ".join(f"{v} {runs[v][0]['epoch_s']:.0f} s" for v in runs)))
    else:
        out.append(_missing(anc, COMMANDS["anchor"], "needs the ours run and a run of the authors' code"))
    hit = _run(pre, "llama-3.2-1b", "single")
    if hit:
        r, rep = hit
        out.append((f"{r['peak_memory_gib']:.1f}", rep["device"], rep["date"],
                    f"{cmd}: {r['rows'][0]}x{r['rows'][1]} rows of {rep['seq_len']}"))
    else:
        out.append(_missing(pre, cmd, "no successful llama-3.2-1b run"))
    return out


def _missing(reports, cmd, why) -> tuple:
    if not reports:
        why = "not run"
    return (f"not measured ({why})", "", "", cmd)


def table(values: list[tuple]) -> str:
    return markdown_table(["figure", "value", "device", "date", "command"],
                          [(f, *v) for f, v in zip(FIGURES, values)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="folders holding pretrain.json / anchor*.json")
    a = p.parse_args(argv)
    try:
        pre, anc = load(a.folders)
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows(pre, anc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
