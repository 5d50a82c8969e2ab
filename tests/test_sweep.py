"""Sweep statistics against scipy / closed forms, and the sweep script with fake commands."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from conftest import load_script
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


def test_paired_ttest_pairs_by_seed_not_by_dict_order():
    """Cells and baseline gathered in different orders (runs finish in any order): the
    test pairs seed with seed. Dict-order pairing gives another p here, so this can fail."""
    by_seed_cell = {0: 0.61, 1: 0.52, 2: 0.74, 3: 0.58}
    by_seed_base = {0: 0.55, 1: 0.50, 2: 0.66, 3: 0.57, 9: 0.99}   # seed 9: no partner
    cell = {s: by_seed_cell[s] for s in (2, 0, 3, 1)}
    base = {s: by_seed_base[s] for s in (1, 3, 9, 0, 2)}
    ref = sps.ttest_rel([by_seed_cell[s] for s in range(4)], [by_seed_base[s] for s in range(4)],
                        alternative="greater")
    t, p, n = paired_ttest_greater(cell, base)
    assert n == 4 and (t, p) == pytest.approx((ref.statistic, ref.pvalue))
    common = [s for s in base if s in cell]
    wrong = sps.ttest_rel(list(cell.values()), [base[s] for s in common], alternative="greater")
    assert abs(wrong.pvalue - ref.pvalue) > 0.05
    # ...and through the table code, whose dicts of metrics come in run-completion order.
    cells = {(1, 1.0): {s: {"semantic": v} for s, v in cell.items()}}
    baseline = {s: {"semantic": v} for s, v in base.items()}
    assert cell_summary(cells[(1, 1.0)], "semantic", baseline)["p"] == pytest.approx(ref.pvalue)
    assert f"| {ref.pvalue:.3g} |" in sweep_table(cells, baseline, ["semantic"], "semantic")


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


def table_grid(table, metric):
    """The k × λ grid of a sweep table as ``(ks, lambdas, means in %)`` (NaN for n/a)."""
    lines = table.split(f"### {metric}: k × λ")[1].strip().splitlines()
    lbds = [float(x) for x in lines[0].strip("| ").split(" | ")[1:]]
    ks, grid = [], []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = line.strip("| ").split(" | ")
        ks.append(int(cells[0]))
        grid.append([float("nan") if c == "n/a" else float(c.split()[0]) for c in cells[1:]])
    return ks, lbds, np.array(grid)


def test_heatmap_draws_the_table(tmp_path):
    """The matrix drawn, its labels and the saved PNG's cell colours equal the table's grid."""
    import matplotlib.image

    cells = {**FIXED_CELLS, (4, 0.5): {0: {"semantic": 0.9}, 5: {"semantic": 0.8}}}
    fig = plot_heatmap(cells, "semantic", str(tmp_path / "h.png"), FIXED_BASE)
    ks, lbds, grid = table_grid(sweep_table(cells, FIXED_BASE, ["semantic"], "semantic"),
                                "semantic")
    assert (ks, lbds) == ([1, 2, 4], [0.5, 1.0, 2.0])
    ax = fig.axes[0]
    image = ax.images[0]
    drawn = np.ma.filled(np.ma.masked_invalid(image.get_array()).astype(float), np.nan)
    np.testing.assert_allclose(drawn, grid, atol=0.005 + 1e-9)   # the table rounds to 0.01
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "4"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2"]
    labels = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
              for t in ax.texts}
    assert labels == {(i, j): f"{v:.1f}" for (i, j), v in np.ndenumerate(grid) if np.isfinite(v)}
    # Pixels of the PNG, a quarter cell off each centre (clear of the annotation).
    png = matplotlib.image.imread(tmp_path / "h.png")
    height = png.shape[0]
    for (i, j), v in np.ndenumerate(grid):
        x, y = ax.transData.transform((j - 0.3, i - 0.3))
        rgb = png[int(round(height - y)), int(round(x)), :3]
        if np.isfinite(v):
            np.testing.assert_allclose(rgb, image.cmap(image.norm(v))[:3], atol=2 / 255)
        else:
            assert np.allclose(rgb, 1.0), f"missing cell ({ks[i]}, {lbds[j]}) is painted {rgb}"


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
    (tmp_path / "my cfg.yaml").write_text("train: {steps: 10}\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--out", str(tmp_path / "s"),
           "--ks", "4", "--lambdas", "2", "--seeds", "3", "--config", "my cfg.yaml",
           "--data", "test.jsonl", "--dry-run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "pretrain.py --config 'my cfg.yaml' --jepa.k 4 --jepa.lbd 2 --seed 3 --run-dir" \
        in res.stdout
    assert "--jepa.k 0 --jepa.lbd 0 --seed 3" in res.stdout    # the baseline
    assert "-m megajepa.export" in res.stdout
    assert "-m megajepa.eval --model" in res.stdout and "k4_lbd2/seed3/export" in res.stdout
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------- inputs checked up front
def _sweep_main():
    return load_script("sweep").main


RECORD = json.dumps({"messages": [{"role": "user", "content": "a"},
                                  {"role": "assistant", "content": "b"}]}) + "\n"


@pytest.mark.parametrize("extra, message", [
    ([], "--data is needed"),                               # README's old command
    (["--data", "missing.jsonl"], "--data missing.jsonl: no such file"),
    (["--data", "bad.jsonl"], "--data bad.jsonl:2: malformed JSON"),
    (["--data", "d.jsonl", "--config", "nope.yaml"], "--config nope.yaml: does not exist"),
    (["--data", "d.jsonl", "--config", "broken.yaml"], "broken.yaml:2:1: invalid YAML"),
    (["--data", "d.jsonl", "--config", "small.yaml"], "data.seq_len=4 is too small"),
    (["--data", "d.jsonl", "--config", "nostore.yaml"], "data.train no_store: does not exist"),
    (["--data", "d.jsonl", "--ks", "1,-2"], "--ks -2: must be a finite number >= 0"),
    (["--data", "d.jsonl", "--lambdas", "1,nan"], "--lambdas nan: must be a finite number"),
    (["--data", "d.jsonl", "--seeds", "0,1,0"], "--seeds lists a value twice"),
    (["--data", "d.jsonl", "--metric", "bleu"], "--metric bleu: not a metric of --task nlrx"),
    (["--data", "d.jsonl", "--eval-cmd", "{python} x {dataset}"],
     "--eval-cmd: unknown placeholder {dataset}"),
    (["--data", "d.jsonl", "--train-cmd", "{python} -c 'print({1: 2})'"],
     "--train-cmd: unknown placeholder {1"),
    (["--data", "d.jsonl", "--train-cmd", "echo {"], "--train-cmd 'echo {'"),
    (["--data", "d.jsonl", "--metrics-file", "{run_dir}/{metrics}.json"],
     "--metrics-file: unknown placeholder {metrics}"),
    (["--data", "d.jsonl", "--train-cmd", "{python} {pretrain} --config {config}"],
     "--train-cmd uses {config} but no --config is given"),
])
def test_sweep_checks_every_input_before_the_first_cell(tmp_path, monkeypatch, capsys, extra,
                                                        message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(RECORD)
    (tmp_path / "bad.jsonl").write_text(RECORD + "{oops\n")
    (tmp_path / "broken.yaml").write_text("model: {preset: tiny\n")
    (tmp_path / "small.yaml").write_text("data: {seq_len: 4}\n")
    (tmp_path / "nostore.yaml").write_text("data: {train: no_store}\n")
    calls = tmp_path / "calls.txt"
    train = FAKE_TRAIN.replace("CALLS", str(calls)) + (" {config}" if "--config" in extra else "")
    argv = ["--out", "sw", "--ks", "1", "--lambdas", "1", "--seeds", "0", "--train-cmd", train,
            *extra]
    assert _sweep_main()(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not calls.exists() and not (tmp_path / "sw").exists()   # nothing ran or was written


def test_sweep_without_config_runs_pretrain_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(RECORD)
    argv = ["--out", "sw", "--ks", "1", "--lambdas", "2", "--seeds", "0", "--data", "d.jsonl",
            "--dry-run"]
    assert _sweep_main()(argv) == 0
    out = capsys.readouterr().out
    assert f"{ROOT / 'pretrain.py'} --jepa.k 1 --jepa.lbd 2 --seed 0 --run-dir sw/k1_lbd2/seed0" \
        in out
    assert "--config" not in out and not (tmp_path / "sw").exists()


def test_sweep_reports_only_files_it_wrote(tmp_path, monkeypatch, capsys):
    """A sweep whose JEPA cells all failed has no heatmap and does not claim one."""
    monkeypatch.chdir(tmp_path)
    fail_jepa = (f"{sys.executable} -c \"import sys, json, pathlib; d = pathlib.Path(sys.argv[2]); "
                 "sys.exit(1) if sys.argv[1] != '0' else None; "
                 "(d / 'eval').mkdir(parents=True, exist_ok=True); "
                 "(d / 'eval' / 'metrics.json').write_text(json.dumps({{'exact': 0.5, "
                 "'startswith': 0.5, 'semantic': 0.5}}))\" {k} {run_dir}")
    argv = ["--out", "sw", "--ks", "1", "--lambdas", "1", "--seeds", "0", "--train-cmd",
            "true", "--export-cmd", "", "--eval-cmd", fail_jepa]
    assert _sweep_main()(argv) == 1
    out = capsys.readouterr().out
    assert not (tmp_path / "sw" / "heatmap.png").exists() and "heatmap.png" not in out
    assert "report: sw/results.md, sw/results.json (no heatmap" in out
    assert _sweep_main()(["--out", "elsewhere", "--report-only"]) == 2
    assert "no finished cell under elsewhere" in capsys.readouterr().err


def test_sweep_checks_the_config_with_each_cells_flags(tmp_path, monkeypatch, capsys):
    """gamma 0 is a valid config, but not for the lambda=0 baseline cell the sweep adds."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(RECORD)
    (tmp_path / "g0.yaml").write_text("jepa: {gamma: 0.0}\n")
    argv = ["--out", "sw", "--ks", "1", "--lambdas", "1", "--seeds", "0", "--data", "d.jsonl",
            "--config", "g0.yaml", "--dry-run"]
    assert _sweep_main()(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "g0.yaml" in err and "nothing to train" in err, err
    assert _sweep_main()(argv + ["--no-baseline"]) == 0
    assert "--config g0.yaml --jepa.k 1 --jepa.lbd 1" in capsys.readouterr().out
