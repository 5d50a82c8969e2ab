"""scripts/table1.py at tiny size: (arm, seed) cells train, evaluate and append one line each
to the results file; a rerun skips finished cells; an interrupted cell resumes from its
checkpoint; bad input is one error line with nothing written."""
import json
import os
import subprocess
import sys

import pytest

from test_train import ROOT, metrics, store  # noqa: F401 - store is a fixture

CONFIG = """\
model: {preset: tiny}
data: {seq_len: 128, micro_batch_examples: 64, micro_batch_rows: 4}
jepa: {k: 2, lbd: 2.0, read_at: last}
optim: {lr: 1.0e-3, schedule: linear, warmup_steps: 0, min_lr_ratio: 0.0}
train: {epochs: 1, log_every: 2, save_every: 2, eval_every: 6}
"""


def table1(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "table1.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def lines(path):
    with open(path) as fh:
        return [json.loads(x) for x in fh if x.strip()]


@pytest.mark.slow
def test_cells_append_skip_and_resume(store, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    results, out = tmp_path / "runs.jsonl", tmp_path / "out"
    test = os.path.join(os.path.dirname(store), "test.jsonl")
    base = ["--config", str(cfg), "--store", store, "--test", test, "--seeds", "0", "--tag", "t",
            "--out", str(out), "--results", str(results), "--limit", "5", "--max-new-tokens", "8",
            "--device", "cpu"]
    jepa = ["--arm", "next-token=--lambda 0", "--arm", "jepa=--jepa.sigreg 0.1"]

    # interrupted: the JEPA cell stops at step 4 (no export), fails its eval, writes no line
    p = table1(*base, "--arm", "jepa=--jepa.sigreg 0.1", "--train-flags", "--train.stop_at 4")
    assert p.returncode == 1 and "FAILED t/jepa/seed0" in p.stderr, p.stdout + p.stderr
    assert not results.exists() or lines(results) == []

    p = table1(*base, *jepa)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    recs = {r["arm"]: r for r in lines(results)}
    assert set(recs) == {"next-token", "jepa"}
    for arm, r in recs.items():
        run_dir = out / "t" / arm / "seed0"
        acc = json.loads((run_dir / "eval" / "metrics.json").read_text())
        assert (r["tag"], r["seed"], r["n"]) == ("t", 0, 5)
        assert all(r[m] == acc[m] for m in ("exact", "startswith", "semantic"))
        m = [x for x in metrics(run_dir) if "loss" in x]
        assert [x["step"] for x in m] == [2, 4, 6]          # 400 pairs // 64 = 6 steps, one curve
        assert (r["steps"], r["examples"]) == (6, 6 * 64) == (m[-1]["step"], m[-1]["examples"])
        held = [x for x in metrics(run_dir) if "eval/paired_cos" in x][-1]
        assert r["paired_cos"] == held["eval/paired_cos"] and r["collapse_step"] == 6
    assert recs["jepa"]["sigreg"] > 0 and recs["next-token"]["sigreg"] is None
    assert "resumed from" in (out / "t" / "jepa" / "seed0" / "cell.log").read_text()

    before = (out / "t" / "jepa" / "seed0" / "metrics.jsonl").read_text()
    p = table1(*base, *jepa)                                 # finished cells are skipped
    assert p.returncode == 0 and p.stdout.count("[table1] skip") == 2, p.stdout
    assert len(lines(results)) == 2
    assert (out / "t" / "jepa" / "seed0" / "metrics.jsonl").read_text() == before

    png = tmp_path / "collapse.png"
    p = table1("--report", "--tag", "t", "--results", str(results), "--out", str(out), "--plot", str(png))
    assert p.returncode == 0 and "| next-token | 1 |" in p.stdout and "| jepa | 1 |" in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_curve_after_every_epoch(store, tmp_path):
    """--curve-limit: a checkpoint and a held-out collapse eval at each epoch end, the earlier
    epochs' checkpoints evaluated, the last point from the final eval; --prune."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("epochs: 1", "epochs: 2").replace(", eval_every: 6", ""))
    results, out = tmp_path / "runs.jsonl", tmp_path / "out"
    test = os.path.join(os.path.dirname(store), "test.jsonl")
    p = table1("--config", str(cfg), "--store", store, "--test", test, "--seeds", "0", "--tag", "c",
               "--out", str(out), "--results", str(results), "--limit", "6", "--curve-limit", "4",
               "--max-new-tokens", "8", "--device", "cpu", "--prune", "--arm", "a=")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (r,) = lines(results)
    run_dir = out / "c" / "a" / "seed0"
    assert [(c["epoch"], c["step"], c["n"]) for c in r["curve"]] == [(1, 6, 4), (2, 12, 4)]
    first = json.loads((run_dir / "epoch1" / "metrics.json").read_text())
    assert first["model"].endswith("step_00000006") and first["n"] == 4
    assert all(r["curve"][0][m] == first[m] for m in ("exact", "startswith", "semantic"))
    preds = lines(run_dir / "eval" / "predictions.jsonl")[:4]
    for m in ("exact", "startswith", "semantic"):
        assert r["curve"][1][m] == sum(x[m] for x in preds) / 4
    held = {x["step"]: x for x in metrics(run_dir) if "eval/paired_cos" in x}
    assert sorted(held) == [6, 12]
    for c in r["curve"]:
        assert c["paired_cos"] == held[c["step"]]["eval/paired_cos"]
        assert c["eff_rank_code"] == held[c["step"]]["eval/eff_rank_code"]
    assert r["curve_s"] > 0 and not (run_dir / "checkpoints").exists()
    assert (run_dir / "export" / "config.json").exists()
    p = table1("--report", "--tag", "c", "--results", str(results))
    assert p.returncode == 0 and "| a | 1 | 1 |" in p.stdout and "| a | 2 | 1 |" in p.stdout, p.stdout


def test_bad_input_is_one_line_and_writes_nothing(store, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    test = os.path.join(os.path.dirname(store), "test.jsonl")
    out, results = tmp_path / "out", tmp_path / "runs.jsonl"
    common = ["--config", str(cfg), "--test", test, "--tag", "t", "--out", str(out),
              "--results", str(results)]
    for args, message in ((["--store", str(tmp_path / "nope"), "--arm", "a="], "nope: does not exist"),
                          (["--store", store], "at least one --arm"),
                          (["--store", store, "--arm", "a=--jepa.sigreg -1"], "jepa.sigreg"),
                          (["--store", store, "--arm", "a=", "--arm", "a=--lambda 0"], "repeat"),
                          (["--store", store, "--arm", "a=", "--curve-limit", "5", "--limit", "3"],
                           "more than --limit"),
                          (["--store", store, "--arm", "a=--data.micro_batch_examples 0",
                            "--curve-limit", "5"], "examples budget")):
        p = table1(*common, *args)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
        assert p.stderr.count("\n") == 1 or "pretrain.py: error" in p.stderr, p.stderr
        assert not out.exists() and not results.exists()
