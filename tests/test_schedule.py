"""LR schedules against hand-computed values and Hugging Face's linear schedule."""
import math

import pytest
import torch

from megajepa.schedule import for_config, lr_lambda, resolve_warmup


def values(f, n):
    return [f(s) for s in range(n)]


def test_linear_no_warmup_is_hugging_face_default():
    assert values(lr_lambda("linear", 4), 5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    from transformers import get_linear_schedule_with_warmup
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=37)
    ours = lr_lambda("linear", 37)
    for s in range(40):
        assert abs(hf.lr_lambdas[0](s) - ours(s)) < 1e-12


def test_cosine_with_warmup_and_floor_by_hand():
    f = lr_lambda("cosine", 10, 2, 0.1)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert abs(f(6) - 0.55) < 1e-12                      # halfway: 0.1 + 0.9 * 0.5
    assert abs(f(4) - (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))) < 1e-12
    assert abs(f(10) - 0.1) < 1e-12 and abs(f(50) - 0.1) < 1e-12


def test_linear_with_warmup_and_floor_by_hand():
    f = lr_lambda("linear", 10, 2, 0.1)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert abs(f(4) - 0.775) < 1e-12 and abs(f(6) - 0.55) < 1e-12 and abs(f(10) - 0.1) < 1e-12


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_lambda("step", 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_lambda("linear", 10, 11)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        lr_lambda("cosine", 10, 0, 1.5)


def test_for_config_resolves_auto_warmup():
    from megajepa.config import Config
    cfg = Config()
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = "linear", -1, 0.0
    assert resolve_warmup(-1, 50) == 5 and resolve_warmup(-1, 10 ** 6) == 1000
    f = for_config(cfg, 50)
    assert f(4) == 1.0 and f(0) == 0.2 and abs(f(14) - 0.8) < 1e-12  # (14 - 5) / 45 = 0.2
    cfg.optim.warmup_steps = 60
    with pytest.raises(ValueError, match="exceeds the run's 50"):
        for_config(cfg, 50)
