"""scripts/bench/harness.py, what the benchmarks share: the timing windows and their
statistics, pretrain.py's logged windows, the longest prefix of examples that fits a row
budget (against a plain scan), and the reports."""
import json

from conftest import load_script

bh = load_script("bench/harness")


def test_timers_split_steps_at_the_boundary():
    t = bh.Timers()
    t.events = [("data", 0.0, 1.0), ("forward", 1.0, 3.0), ("optimizer", 3.0, 4.0),
                ("data", 4.0, 4.5), ("forward", 4.5, 5.0), ("optimizer", 5.0, 6.0)]
    steps = t.per_step("optimizer")
    assert steps[0]["data"] == 1.0 and steps[0]["forward"] == 2.0 and steps[0]["cycle"] is None
    assert steps[1] == {"data": 0.5, "forward": 0.5, "optimizer": 1.0, "cycle": 2.0}
    assert bh.spread([3, 1, 2])["median"] == 2


def test_interleaved_runs_the_variants_in_turn_and_times_only_after_warmup():
    calls, counter = [], iter(range(100))
    times, last = bh.interleaved({"a": lambda: calls.append("a") or next(counter),
                                  "b": lambda: calls.append("b") or next(counter)},
                                 reps=3, warmup=2, before=lambda: calls.append("."))
    assert "".join(calls) == ".a.b" * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert last == {"a": 8, "b": 9} and all(t >= 0 for v in times.values() for t in v)
    assert bh.paired_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == 2.0
    s = bh.spread([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], quartiles="exclusive")
    assert (s["q1"], s["median"], s["q3"]) == (2.25, 4.5, 6.75)


def test_longest_prefix_is_the_longest_that_fits():
    for costs in ([5, 1, 7, 3, 3, 9, 2], [10], [1] * 17, [4, 4, 4, 4]):
        def rows_needed(m, costs=costs):  # rows of 8 tokens, filled in order
            rows, used = 1, 0
            for c in costs[:m]:
                if used + c > 8:
                    rows, used = rows + 1, 0
                used += c
            return rows

        for budget in (1, 2, 3, 5):
            fits = [m for m in range(1, len(costs) + 1) if rows_needed(m) <= budget]
            assert bh.longest_prefix(len(costs), rows_needed, budget) == max(fits, default=1)


def test_windows_weight_each_record_by_its_steps():
    recs = [dict(step=10, step_time_s=2.0), dict(step=5, step_time_s=9.0), dict(step=15, step_time_s=1.0)]
    assert [(s, t) for s, t, _ in bh.windows(recs)] == [(5, 45.0), (5, 10.0), (5, 5.0)]
    assert [(s, t) for s, t, _ in bh.windows(recs, warmup=5)] == [(5, 10.0), (5, 5.0)]


def test_reports_and_workloads(tmp_path):
    bh.write_report(tmp_path / "r" / "x.md", "| a |", dict(value=1.5))
    assert (tmp_path / "r" / "x.md").read_text() == "| a |\n"
    assert json.loads((tmp_path / "r" / "x.json").read_text()) == {"value": 1.5}
    p = bh.provenance(str(bh.ROOT / "scripts" / "bench" / "x.py"), ["--out", "o"])
    assert p["command"] == "python scripts/bench/x.py --out o" and p["device"] and p["date"]
    a, b = bh.random_pairs(3, 100, seed=1), bh.random_pairs(3, 100, seed=1)
    assert [e.views for e in a] == [e.views for e in b]
    assert all(40 <= len(e.views[0]) <= 400 and 20 <= len(e.views[1]) <= 200 for e in a)
