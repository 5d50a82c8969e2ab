"""The benchmarks: one entry point per kind of measurement, run from the repository root as
``python scripts/bench/<name>.py``, on the pieces they share in ``harness.py``.
``gpu.sh`` drives them on a lent GPU machine (docs/benchmarks.md)."""
