"""metrics.MetricsLogger: metrics.jsonl is strict JSON whatever the values (a skipped step's
NaN loss or infinite gradient norm is ``null``), and TensorBoard keeps the values themselves."""
import json
import math

import numpy as np

from megajepa.metrics import MetricsLogger


def strict(line):
    """``json.loads`` that refuses NaN / Infinity (Python's default accepts them; JSON does not)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=refuse)


def test_nonfinite_values_are_null_in_jsonl_and_unchanged_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(str(tmp_path), enabled=True)
    log.log(1, {"loss": 2.5, "grad_norm": 1.25, "skipped_steps": 0, "mfu": None})
    log.log(2, {"loss": float("nan"), "grad_norm": float("inf"), "lr": float("-inf"),
                "skipped_steps": 1, "tflops": np.float64("inf"), "epoch": 0})
    log.close()

    rows = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {k: rows[0][k] for k in ("loss", "grad_norm", "skipped_steps", "mfu")} == \
        {"loss": 2.5, "grad_norm": 1.25, "skipped_steps": 0, "mfu": None}
    assert {k: rows[1][k] for k in ("loss", "grad_norm", "lr", "tflops", "skipped_steps", "epoch")} == \
        {"loss": None, "grad_norm": None, "lr": None, "tflops": None, "skipped_steps": 1, "epoch": 0}

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    grad = {e.step: e.value for e in events.Scalars("grad_norm")}
    loss = {e.step: e.value for e in events.Scalars("loss")}
    lr = {e.step: e.value for e in events.Scalars("lr")}
    assert grad[1] == 1.25 and math.isinf(grad[2]) and grad[2] > 0
    assert loss[1] == 2.5 and math.isnan(loss[2])
    assert math.isinf(lr[2]) and lr[2] < 0
