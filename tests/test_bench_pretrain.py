"""scripts/bench/pretrain.py and scripts/bench/report.py, the GPU session's pretrain.py
benchmark and headline table, checked on CPU so that the GPU call finds no typo.

The synthetic store must be what the loader and pretrain.py read (the design bound is
computed from it); the figures are time-weighted over the windows after the warm-up; every
run's flags pass pretrain.py's own parser; the end-to-end tiny run (slow) writes the report
the headline parser turns into rows.
"""
import json
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


bp = load_script("bench/pretrain")
br = load_script("bench/report")


def test_store_is_what_the_loader_reads_and_the_bound_counts_it(tmp_path):
    from data_tools.store import open_store
    from data_tools.tokenizer import load_tokenizer, pred_ids
    from megajepa.layout import example_cost

    path = bp.make_store(str(tmp_path / "st"), examples=30, vocab=400, text_len=(5, 9),
                         code_len=(3, 6), seed=1)
    st = open_store(path)
    tok, added = load_tokenizer(st.tokenizer_path)
    assert added == [] and len(tok) == 400 and pred_ids(tok) == list(range(5, 13))
    assert st.pred_ids == pred_ids(tok)
    views = [st.views(i) for i in range(len(st))]
    assert all(t[0] == tok.bos_token_id and t[-1] == 4 and c[-1] == tok.eos_token_id
               for t, c in views)
    assert all(5 <= len(t) <= 9 and 3 <= len(c) <= 6 for t, c in views)
    assert max(max(t + c) for t, c in views) < 400
    got = bp.design_bound(path, k=3)
    single = sum(example_cost(st.example(i), k=3) for i in range(len(st)))
    lm = sum(example_cost(st.example(i, jepa=False), k=3) for i in range(len(st)))
    assert got["bound"] == pytest.approx(single / lm)


def test_summary_is_time_weighted_after_warmup():
    recs = [  # step, step_time_s (per step in the window), tflops, ...
        dict(step=5, step_time_s=9.0, tflops=1.0, mfu=0.001, tokens_per_s=1.0, samples_per_s=1.0,
             packing_efficiency=0.5, peak_memory_gb=10.0),
        dict(step=10, step_time_s=1.0, tflops=100.0, mfu=0.1, tokens_per_s=100.0, samples_per_s=2.0,
             packing_efficiency=0.9, peak_memory_gb=11.0),
        dict(step=12, step_time_s=2.0, tflops=400.0, mfu=0.4, tokens_per_s=50.0, samples_per_s=1.0,
             packing_efficiency=0.9, peak_memory_gb=12.0),
    ]
    s = bp.summarize(recs, warmup=5)
    assert (s["steps"], s["first_step"], s["time_s"]) == (7, 6, 5 * 1.0 + 2 * 2.0)
    assert s["tflops"] == pytest.approx((100 * 5 + 400 * 4) / 9)   # FLOPs / time, not a mean
    assert s["mfu"] == pytest.approx((0.1 * 5 + 0.4 * 4) / 9)
    assert s["peak_memory_gib"] == 12.0
    with pytest.raises(ValueError, match="no logged window"):
        bp.summarize(recs, warmup=12)


def test_dry_run_checks_every_flag_with_pretrain_parser(tmp_path, capsys):
    assert bp.main(["--out", str(tmp_path), "--dry-run"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 3  # 1b single + lm, 3b single
    assert "--preset llama-3.2-1b" in cmds[0] and "--lambda 0" in cmds[1]
    assert "--data.micro_batch_rows 1 --optim.grad_accum 4" in cmds[2]
    assert bp.main(["--out", str(tmp_path), "--dry-run", "--extra", "--model.compile fast"]) == 2
    assert bp.main(["--out", str(tmp_path), "--dry-run", "--rows", "llama-3.2-1b=0"]) == 2
    assert bp.main(["--out", str(tmp_path), "--dry-run", "--steps", "10"]) == 2
    assert not (tmp_path / "store").exists()


def _report(tmp_path, runs, ratios=None):
    rep = dict(device="NVIDIA H100 80GB HBM3", date="2026-12-01", seq_len=4096, k=3, vocab=128256,
               design=dict(bound=1.31), runs=runs, ratios=ratios or {}, command="x")
    (tmp_path / "pretrain.json").write_text(json.dumps(rep))


def _ok(preset, variant, **kw):
    return dict(dict(preset=preset, variant=variant, ok=True, steps=30, first_step=11, rows=[4, 1],
                     mfu=0.47, tokens_per_s=5e4, samples_per_s=100.0, peak_memory_gib=41.2), **kw)


def test_report_rows_from_outputs(tmp_path):
    _report(tmp_path, [_ok("llama-3.2-1b", "single"),
                       _ok("llama-3.2-1b", "lm", samples_per_s=125.0, tokens_per_s=4e4),
                       dict(preset="llama-3.2-3b", variant="single", ok=False, rows=[1, 4],
                            error="CUDA out of memory")])
    anc = dict(device="NVIDIA H100 80GB HBM3", date="2026-12-01", preset="llama-3.2-1b",
               runs=[dict(variant="three", ok=True, epoch_s=600.0, examples=8000),
                     dict(variant="ours", ok=True, epoch_s=40.0, examples=8000)])
    (tmp_path / "anchor_three.json").write_text(json.dumps(anc))
    text = br.table(br.rows(*br.load([str(tmp_path)])))
    lines = text.splitlines()
    assert [ln.split(" | ")[0].lstrip("| ") for ln in lines[2:]] == list(br.FIGURES)
    assert "| 0.47 | NVIDIA H100" in lines[2]
    assert "not measured (no successful llama-3.2-3b run)" in lines[3]
    assert "| 1.05 (bound 1.31) |" in lines[4]          # 4e4 / 5e4 x 1.31: same examples
    assert "1.25 over the examples" in lines[4]         # samples/s: the windows' own examples
    assert "| 15.0 (three) |" in lines[5]
    assert "| 41.2 |" in lines[6]


def test_report_without_outputs_says_not_measured(tmp_path):
    lines = br.table(br.rows([], [])).splitlines()
    assert len(lines) == 7 and all("not measured (not run)" in ln for ln in lines[2:])
    assert br.main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_tiny_end_to_end_on_cpu(tmp_path):
    """pretrain.py twice at the tiny size (about 45 s): the report the GPU call writes."""
    out = tmp_path / "bp"
    rc = bp.main(["--presets", "tiny", "--seq-len", "256", "--rows", "tiny=2", "--steps", "6",
                  "--warmup", "2", "--log-every", "2", "--vocab", "300", "--examples", "300",
                  "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "pretrain.json").read_text())
    assert [(r["preset"], r["variant"], r["steps"]) for r in rep["runs"]] == \
        [("tiny", "single", 4), ("tiny", "lm", 4)]
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in rep["runs"])
    assert rep["ratios"]["tiny"] > 0 and rep["design"]["bound"] > 1
    assert "design bound" in (out / "pretrain.md").read_text()
