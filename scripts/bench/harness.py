"""What the benchmarks share, once: the device in words, timing windows and their statistics,
pretrain.py's logged windows, the longest prefix of examples that fits a row budget, and the
Markdown / JSON report.

    ROOT                       the repository (first on sys.path once this is imported)
    device_name()              "NVIDIA H100 80GB HBM3" or "AMD EPYC (2 cores, avx512_bf16, no AMX)"
    interleaved({name: fn}, reps, warmup)   seconds of each call, the variants in turn
    median_time(fn, reps)      median seconds of one callable after a warm-up call
    spread(xs), paired_ratio(xs, ys)        median and quartiles; median of per-round ratios
    Timers().wrap(owner, "name", "label")    every call of owner.name appends (label, t0, t1)
    read_metrics(path), windows(records, warmup)   pretrain.py's metrics.jsonl and its windows
    longest_prefix(n, rows_needed, rows)     most examples whose packing fits in ``rows`` rows
    provenance(__file__, argv), write_report(path.md, text, data), write_json(path, data)
    finish(parts, started, out)   a report printed part by part: its wall time, then the file

A benchmark is ``scripts/bench/<name>.py``, run from the repository root; it starts with

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
    from bench.harness import ...

(the package, not the folder, goes on sys.path: ``bench/pretrain.py`` must not shadow the
root ``pretrain.py``).

    python scripts/bench/harness.py      prints this machine's device line
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from megajepa.stats import markdown_table  # noqa: E402,F401  (the benchmarks' tables)

# CPU features that decide bf16 speed on a CPU (AVX-512 BF16 dot products, AMX tiles).
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")


# ------------------------------------------------------------------------------ the device

def cpu_model() -> tuple[str, set]:
    """``(model name, flags)`` from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def device_name(device=None) -> str:
    """The GPU's name, or the CPU's model, visible cores and bf16-relevant ISA flags.
    ``device``: where the benchmark runs ("cpu" gives the CPU even beside a GPU); default:
    the GPU when there is one."""
    import torch

    if str(device).startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    name, flags = cpu_model()
    have = [f for f in CPU_FLAGS if f in flags]
    amx = "" if "amx_bf16" in flags else ", no AMX"
    return f"{name} ({os.cpu_count()} cores visible{', ' if have else ''}{', '.join(have)}{amx})"


def sync_for(device):
    """What closes a timing window on ``device``: torch.cuda.synchronize on CUDA, else nothing."""
    import torch

    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


# ------------------------------------------------------------------------- timing windows

def interleaved(steps: dict, reps: int, warmup: int = 0, *, sync=None, before=None,
                progress: bool = False) -> tuple[dict, dict]:
    """Time each callable of ``steps`` (``{name: fn}``) once per round, in turn (a b c, a b c,
    ...: the drift of a shared machine reaches every variant alike), ``warmup`` untimed rounds
    first. ``before()`` runs before each call, outside its window; ``sync()`` runs before
    the window opens and before it closes (``sync_for(device)``). ``progress``: one line per
    round on stderr. Returns ``({name: [seconds, one per timed round]}, {name: what its last
    call returned})``."""
    times, last = {name: [] for name in steps}, {}
    for rep in range(warmup + reps):
        this = {}
        for name, fn in steps.items():
            if before is not None:
                before()
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            last[name] = fn()
            if sync is not None:
                sync()
            this[name] = time.perf_counter() - t0
        if rep >= warmup:
            for name, dt in this.items():
                times[name].append(dt)
        if progress:
            tag = f"rep {rep + 1 - warmup}/{reps}" if rep >= warmup else f"warm-up {rep + 1}/{warmup}"
            print(tag + ": " + " ".join(f"{n} {dt * 1e3:.1f}ms" for n, dt in this.items()),
                  file=sys.stderr, flush=True)
    return times, last


def median_time(fn, reps: int, warmup: int = 1, *, sync=None, before=None) -> float:
    """Median seconds of ``reps`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    return statistics.median(interleaved({"": fn}, reps, warmup, sync=sync, before=before)[0][""])


def spread(xs, quartiles: str = "inclusive") -> dict:
    """Median, first and third quartiles, min and max of ``xs`` (n >= 1); ``quartiles``: the
    method of ``statistics.quantiles``."""
    xs = sorted(xs)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method=quartiles)
    return dict(n=len(xs), median=statistics.median(xs), q1=q1, q3=q3, min=xs[0], max=xs[-1])


def paired_ratio(xs, ys) -> float:
    """Median over rounds of the per-round ratio x / y (robust to a drifting machine)."""
    return statistics.median(x / y for x, y in zip(xs, ys))


class Timers:
    """Wall-clock intervals of wrapped calls, in call order: ``events = [(label, t0, t1)]``."""

    def __init__(self):
        self.events: list[tuple[str, float, float]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.events.append((label, t0, time.perf_counter()))

        setattr(owner, name, timed)

    def mark(self, label: str) -> None:
        t = time.perf_counter()
        self.events.append((label, t, t))

    def per_step(self, boundary: str) -> list[dict]:
        """Seconds per label between consecutive ends of ``boundary`` events (step s holds
        the events that end after step s-1's boundary and no later than step s's)."""
        ends = [t1 for label, _, t1 in self.events if label == boundary]
        steps, start = [], None
        for end in ends:
            sums: dict = {}
            for label, t0, t1 in self.events:
                if (start is None or t1 > start) and t1 <= end:
                    sums[label] = sums.get(label, 0.0) + (t1 - t0)
            sums["cycle"] = end - start if start is not None else None
            steps.append(sums)
            start = end
        return steps


# ------------------------------------------------------------- pretrain.py runs and logs

def read_metrics(path: str) -> list[dict]:
    """The step records of a run's metrics.jsonl (none if absent; a line being written ends it)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                break
    return [r for r in out if "step_time_s" in r]


def windows(records: list[dict], warmup: int = 0) -> list[tuple[int, float, dict]]:
    """pretrain.py's logged windows after ``warmup`` steps, in step order: ``(steps, seconds,
    record)`` each (a record's ``step_time_s`` is the mean over the steps since the last one)."""
    prev, out = 0, []
    for r in sorted(records, key=lambda r: r["step"]):
        steps = r["step"] - prev
        if prev >= warmup:
            out.append((steps, r["step_time_s"] * steps, r))
        prev = r["step"]
    return out


def tail(path: str, n: int = 15) -> str:
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-n:])


def run_logged(cmd: list[str], log_path, env: dict, timeout: float) -> tuple:
    """Run ``cmd`` from the repository root, its output into ``log_path``:
    ``(exit code, or "timeout", wall seconds)``."""
    t0 = time.time()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return rc, time.time() - t0


# ------------------------------------------------------------------------------ workloads

def longest_prefix(n: int, rows_needed, rows: int) -> int:
    """The largest m in [1, n] with ``rows_needed(m) <= rows`` (1 if even one item needs
    more), by bisection: ``rows_needed(m)``, the rows a packing of the first m items takes,
    grows with m."""
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rows_needed(mid) <= rows:
            lo = mid
        else:
            hi = mid - 1
    return lo


def random_pairs(n: int, vocab: int, seed: int, text_len=(40, 400), code_len=(20, 200)) -> list:
    """``n`` pair examples of random ids in [16, vocab), view lengths uniform in the ranges
    (the instruction-data shape of the GPU benchmarks); the same for the same arguments."""
    import torch

    from megajepa.layout import Example

    g = torch.Generator().manual_seed(seed)

    def view(lo, hi):
        m = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(16, vocab, (m,), generator=g).tolist()

    return [Example("pair", [view(*text_len), view(*code_len)]) for _ in range(n)]


# -------------------------------------------------------------------------------- reports

def command_line(script: str, argv=None) -> str:
    """``python scripts/bench/<name>.py ARGS`` (``argv``: the arguments, default sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", os.path.relpath(os.path.abspath(script), ROOT), *args])


def provenance(script: str, argv=None, device=None) -> dict:
    """The fields every report carries: ``device``, ``date``, ``command``."""
    return dict(device=device_name(device), date=datetime.date.today().isoformat(),
                command=command_line(script, argv))


def write_json(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


def write_report(path, text: str, data=None) -> None:
    """The Markdown ``text`` to ``path`` (its folder made) and, given ``data``, the same
    results as JSON beside it (``path`` with ``.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    if data is not None:
        write_json(path.with_suffix(".json"), data)


def finish(parts: list[str], started: float, out=None) -> None:
    """Close a report printed part by part: its last line (the benchmark's wall time since
    ``started``) printed, the whole written to ``out`` when given."""
    parts += ["", f"Wall time of the benchmark: {time.time() - started:.0f} s."]
    print(parts[-1])
    if out:
        write_report(out, "\n".join(parts))


def main(argv=None) -> int:
    """Print this machine's device line, as the benchmark reports record it."""
    argparse.ArgumentParser(description=main.__doc__).parse_args(argv)
    print(device_name())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
