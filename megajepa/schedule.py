"""Learning-rate schedules: the factor that multiplies ``optim.lr`` at optimizer step ``s``
(0-based, as ``torch.optim.lr_scheduler.LambdaLR`` counts), for ``T`` total steps, ``W``
warm-up steps and a final ratio ``r = optim.min_lr_ratio``::

    warm-up (s < W):  (s + 1) / W                       reaches the peak at step W - 1
    p = (s - W) / (T - W), clipped to [0, 1]            progress of the decay
    cosine:  r + (1 - r) * (1 + cos(pi * p)) / 2        the default
    linear:  r + (1 - r) * (1 - p)

    factor
    1 |   /‾‾‾‾\\__                 cosine
      |  /        ‾‾\\__
      | /             ‾‾‾\\___ r
    0 |/____________________ s      (linear: a straight line from 1 to r)
       W                    T

Hugging Face Trainer's default (the LLM-JEPA paper's) is ``linear`` with ``W = 0`` and
``r = 0``: ``(T - s) / T``, the same values as its ``get_linear_schedule_with_warmup``.
With ``W > 0`` the warm-up differs from Hugging Face's ``s / W`` (which spends step 0 at
learning rate 0) by one step.
"""
from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("cosine", "linear")


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int = 0,
              min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier ``f(step)`` of the module docstring."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"schedule needs total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                         f"got {total_steps} and {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    span = max(1, total_steps - warmup_steps)
    r = min_lr_ratio

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = min(1.0, max(0.0, (step - warmup_steps) / span))
        decay = 0.5 * (1.0 + math.cos(math.pi * p)) if schedule == "cosine" else 1.0 - p
        return r + (1.0 - r) * decay

    return f


def resolve_warmup(warmup_steps: int, total_steps: int) -> int:
    """``optim.warmup_steps``, with -1 meaning 10 % of the run, at most 1000 steps."""
    return min(1000, total_steps // 10) if warmup_steps == -1 else warmup_steps


def for_config(cfg, total_steps: int) -> Callable[[int], float]:
    """The run's schedule once its total optimizer steps are known (``train.steps``, or the
    steps an epoch budget derives: :func:`megajepa.loader.budget_steps`)."""
    o = cfg.optim
    warm = resolve_warmup(o.warmup_steps, total_steps)
    if warm > total_steps:
        raise ValueError(f"optim.warmup_steps={warm} exceeds the run's {total_steps} optimizer "
                         "steps; lower optim.warmup_steps")
    return lr_lambda(o.schedule, total_steps, warm, o.min_lr_ratio)
