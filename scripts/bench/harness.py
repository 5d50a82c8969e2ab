"""Pieces the benchmark scripts share: the device in words, step-time statistics, and
wall-clock timers wrapped around a function without changing what it does.

    device_name()        "NVIDIA H100 80GB HBM3" or "AMD EPYC (2 cores, avx512_bf16, no AMX)"
    spread(xs)           median, quartiles, min, max of a list of times
    Timers().wrap(owner, "name", "label")    every call of owner.name appends (label, t0, t1)

    python scripts/bench/harness.py      prints this machine's device line
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

# CPU features that decide bf16 speed on a CPU (AVX-512 BF16 dot products, AMX tiles).
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")


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


def device_name() -> str:
    """The GPU's name, or the CPU's model, visible cores and bf16-relevant ISA flags."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    name, flags = cpu_model()
    have = [f for f in CPU_FLAGS if f in flags]
    amx = "" if "amx_bf16" in flags else ", no AMX"
    return f"{name} ({os.cpu_count()} cores visible{', ' if have else ''}{', '.join(have)}{amx})"


def spread(xs) -> dict:
    """Median, first and third quartiles, min and max of ``xs`` (n >= 1)."""
    xs = sorted(xs)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return dict(n=len(xs), median=statistics.median(xs), q1=q1, q3=q3, min=xs[0], max=xs[-1])


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


def main(argv=None) -> int:
    """Print this machine's device line, as the benchmark reports record it."""
    argparse.ArgumentParser(description=main.__doc__).parse_args(argv)
    print(device_name())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
