"""Sweep statistics against scipy / closed forms, and the sweep script with fake commands."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from megajepa.stats import (best_cell, cell_summary, format_cell, mean_std,
                            paired_ttest_greater, plot_heatmap, sweep_table)

ROOT = Path(__file__).resolve().parents[1]


def test_mean_std():
    assert mean_std([0.5, 0.7, 0.6]) == pytest.approx((0.6, 0.1))
    m, s = mean_std([0.4])
    assert m == 0.4 and math.isnan(s)
    assert all(math.isnan(x) for x in mean_std([]))


def test_paired_ttest_fixed_numbers():
    cell = {0: 0.60, 1: 0.70, 2: 0.65}
    base = {0: 0.50, 1: 0.55, 2: 0.60, 7: 0.99}   # seed 7 has no partner: ignored
    t, p, n = paired_ttest_greater(cell, base)
    # differences 0.10, 0.15, 0.05: mean 0.1, sd 0.05 -> t = 0.1 / (0.05 / sqrt(3))
    assert n == 3
    assert t == pytest.approx(2 * math.sqrt(3))
    assert p == pytest.approx(sps.t.sf(2 * math.sqrt(3), df=2))
    assert p == pytest.approx(0.03709, abs=1e-5)
    ref = sps.ttest_rel([0.6, 0.7, 0.65], [0.5, 0.55, 0.6], alternative="greater")
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue))
    # one-tailed: a worse cell gets p > 0.5
    assert paired_ttest_greater(base, cell)[1] == pytest.approx(1 - p)


def test_paired_ttest_degenerate():
    assert math.isnan(paired_ttest_greater({0: 0.5}, {0: 0.4})[1])
    assert math.isnan(paired_ttest_greater({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})[1])  # const diff
    assert math.isnan(paired_ttest_greater({0: 0.5, 1: 0.6}, {2: 0.4, 3: 0.5})[1])


FIXED_CELLS = {
    (1, 1.0): {0: {"semantic": 0.60}, 1: {"semantic": 0.70}, 2: {"semantic": 0.65}},
    (1, 2.0): {0: {"semantic": 0.52}, 1: {"semantic": 0.58}, 2: {"semantic": 0.61}},
    (2, 1.0): {0: {"semantic": 0.40}, 1: {"semantic": 0.45}},
}
FIXED_BASE = {0: {"semantic": 0.50}, 1: {"semantic": 0.55}, 2: {"semantic": 0.60}}


def test_table_numbers():
    table = sweep_table(FIXED_CELLS, FIXED_BASE, ["semantic"], "semantic")
    assert best_cell(FIXED_CELLS, "semantic") == (1, 1.0)
    s = cell_summary(FIXED_CELLS[(1, 2.0)], "semantic", FIXED_BASE)
    ref = sps.ttest_rel([0.52, 0.58, 0.61], [0.50, 0.55, 0.60], alternative="greater")
    assert s["p"] == pytest.approx(ref.pvalue) and s["pairs"] == 3
    assert s["std"] == pytest.approx(np.std([0.52, 0.58, 0.61], ddof=1))
    assert f"| LLM-JEPA | 1 | 2 | 3 | {format_cell(s['mean'], s['std'], 3)} | {ref.pvalue:.3g} |" \
        in table
    assert "| LLM-JEPA | 1 | 1 | 3 | **65.00 ± 5.00** | 0.0371 |" in table
    assert "| next-token baseline | – | 0 | 3 | 55.00 ± 5.00 |  |" in table
    assert "| 2 | 42.50 ± 3.54 | n/a |" in table   # grid row k=2: lambda 2 missing
    assert "Best cell: k=1, λ=1: semantic 65.00 ± 5.00 vs baseline 55.00 ± 5.00, p = 0.0371" \
        in table


def test_heatmap_png(tmp_path):
    plot_heatmap(FIXED_CELLS, "semantic", str(tmp_path / "h.png"), FIXED_BASE)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------ the script itself
FAKE_TRAIN = (f"{sys.executable} -c \"import sys, pathlib; "
              "pathlib.Path(sys.argv[1]).mkdir(parents=True, exist_ok=True); "
              "open(sys.argv[2], 'a').write(sys.argv[1] + chr(10))\" {run_dir} CALLS")
# accuracy = 0.5 + 0.05 k lbd (1 + seed) + 0.01 seed, except cell k=2 lbd=1 seed=1 which fails once
FAKE_EVAL = (f"{sys.executable} -c \"import sys, json, pathlib, os; "
             "k, l, s, d = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]; "
             "flag = pathlib.Path(d) / 'failed_once'; "
             "bad = (k, l, s) == (2, 1.0, 1) and not flag.exists(); "
             "flag.write_text('x') if bad else None; "
             "sys.exit(3) if bad else None; "
             "a = 0.5 + 0.05 * k * l * (1 + s) + 0.01 * s; "
             "o = pathlib.Path(d) / 'eval'; o.mkdir(exist_ok=True); "
             "(o / 'metrics.json').write_text(json.dumps({{'exact': a / 2, 'startswith': a, "
             "'semantic': a}}))\" {k} {lbd} {seed} {run_dir}")  # {{ }}: literal braces


def _sweep(tmp_path, *extra):
    calls = tmp_path / "calls.txt"
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--out", str(tmp_path / "sw"),
           "--ks", "1,2", "--lambdas", "0.5,1", "--seeds", "0,1", "--task", "nlrx",
           "--train-cmd", FAKE_TRAIN.replace("CALLS", str(calls)), "--export-cmd", "",
           "--eval-cmd", FAKE_EVAL, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    runs = calls.read_text().splitlines() if calls.exists() else []
    return res, runs


def test_sweep_script_runs_resumes_and_reports(tmp_path):
    res, runs = _sweep(tmp_path)
    assert res.returncode == 1, res.stderr            # one cell failed...
    assert "FAILED eval" in res.stderr and "k2_lbd1" in res.stderr
    assert len(runs) == 2 * (1 + 4)                   # baseline + 4 cells, 2 seeds
    res, runs2 = _sweep(tmp_path)
    assert res.returncode == 0, res.stderr            # ...and only its eval is retried
    assert runs2 == runs                              # nothing retrained
    assert res.stdout.count("[sweep] done") == 9

    out = tmp_path / "sw"
    table = (out / "results.md").read_text()
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((out / "results.json").read_text())
    cell = next(c for c in raw["cells"] if (c["k"], c["lbd"]) == (2, 1.0))
    assert cell["mean"] == pytest.approx(0.655) and cell["pairs"] == 2
    # baseline (k=0, lambda=0) is 0.50, 0.51; the cell 0.60, 0.71
    ref = sps.ttest_rel([0.60, 0.71], [0.50, 0.51], alternative="greater")
    assert cell["p"] == pytest.approx(ref.pvalue)
    assert "| next-token baseline | – | 0 | 2 | 25.25 ± 0.35 | 50.50 ± 0.71 | 50.50 ± 0.71 |" \
        in table
    assert f"| 65.50 ± 7.78 | **65.50 ± 7.78** | {ref.pvalue:.3g} |" in table
    assert f"Best cell: k=2, λ=1: semantic 65.50 ± 7.78 vs baseline 50.50 ± 0.71, " \
           f"p = {ref.pvalue:.3g} (2 paired seeds)." in table

    # a deleted metrics file re-runs that cell's eval only; --report-only runs nothing
    (out / "k1_lbd0.5" / "seed0" / "eval" / "metrics.json").unlink()
    res, runs4 = _sweep(tmp_path, "--report-only")
    assert runs4 == runs and "| LLM-JEPA | 1 | 0.5 | 1 |" in (out / "results.md").read_text()
    res, runs5 = _sweep(tmp_path)
    assert res.returncode == 0 and runs5 == runs
    assert "| LLM-JEPA | 1 | 0.5 | 2 |" in (out / "results.md").read_text()


def test_sweep_dry_run_renders_default_commands(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--out", str(tmp_path / "s"),
           "--ks", "4", "--lambdas", "2", "--seeds", "3", "--config", "my cfg.yaml",
           "--data", "test.jsonl", "--dry-run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pretrain.py --config 'my cfg.yaml' --jepa.k 4 --jepa.lbd 2 --seed 3 --run-dir" \
        in res.stdout
    assert "--jepa.k 0 --jepa.lbd 0 --seed 3" in res.stdout    # the baseline
    assert "-m megajepa.export" in res.stdout
    assert "-m megajepa.eval --model" in res.stdout and "k4_lbd2/seed3/export" in res.stdout
    assert not (tmp_path / "s").exists()
