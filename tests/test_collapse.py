"""Collapse metrics against a direct numpy computation and on known inputs; the read-outs
against sequences run alone."""
import os

import numpy as np
import pytest
import torch

from megajepa.collapse import collapse_metrics, derangement, effective_rank, jepa_readouts
from megajepa.layout import Example

from conftest import PAD, PRED_IDS, load_script, random_examples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    pred, code = rng.normal(size=(30, 7)) + 0.5, rng.normal(size=(30, 7))
    got = collapse_metrics(pred, code, seed=3)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    perm = derangement(30, 3)
    assert (perm != np.arange(30)).all() and sorted(perm) == list(range(30))
    want = dict(paired_cos=np.mean([cos(pred[i], code[i]) for i in range(30)]),
                shuffled_cos=np.mean([cos(pred[i], code[perm[i]]) for i in range(30)]),
                code_code_cos=np.mean([cos(code[i], code[j]) for i in range(30) for j in range(30) if i != j]),
                pred_pred_cos=np.mean([cos(pred[i], pred[j]) for i in range(30) for j in range(30) if i != j]))
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-12, key
    rows = code / np.linalg.norm(code, axis=1, keepdims=True)
    s = np.linalg.svd(rows, compute_uv=False)
    assert abs(got["eff_rank_code"] - np.exp(-np.sum(s / s.sum() * np.log(s / s.sum())))) < 1e-12
    assert collapse_metrics(torch.tensor(pred), torch.tensor(code), seed=3) == got


def test_known_inputs():
    rng = np.random.default_rng(1)
    v = rng.normal(size=16)
    collapsed = collapse_metrics(np.tile(v, (50, 1)) * rng.uniform(1, 2, (50, 1)), np.tile(-v, (50, 1)))
    assert abs(collapsed["eff_rank_pred"] - 1) < 1e-6 and abs(collapsed["eff_rank_code"] - 1) < 1e-6
    assert abs(collapsed["paired_cos"] + 1) < 1e-12 and abs(collapsed["shuffled_cos"] + 1) < 1e-12
    iso = rng.normal(size=(2000, 16))
    spread = collapse_metrics(iso, iso)
    assert spread["eff_rank_code"] > 15 and abs(spread["paired_cos"] - 1) < 1e-12
    assert abs(spread["shuffled_cos"]) < 0.05 and abs(spread["code_code_cos"]) < 0.01
    eye = np.eye(8)
    exact = collapse_metrics(eye, eye)
    assert abs(exact["eff_rank_code"] - 8) < 1e-9 and exact["shuffled_cos"] == 0.0
    assert abs(effective_rank(np.diag([1.0, 1.0, 0.0])) - 2) < 1e-12
    with pytest.raises(ValueError, match="N >= 2"):
        collapse_metrics(eye[:1], eye[:1])


@pytest.mark.parametrize("read_at,k,reverse", [("end", 3, False), ("last", 2, False), ("last", 0, True)])
def test_readouts_are_the_pairs_run_alone_in_example_order(sdpa_model, read_at, k, reverse):
    exs = [e for e in random_examples(12, seed=9) if e.kind != "lm"]
    pred, target = jepa_readouts(sdpa_model, exs, k=k, pred_ids=PRED_IDS, pad_id=PAD, seq_len=40,
                                 read_at=read_at, reverse=reverse, rows_per_forward=2)
    cut = 1 if read_at == "last" else 0
    want_p, want_t = [], []
    with torch.no_grad():
        for e in exs:
            v = [list(x)[:len(x) - cut] for x in e.views]
            n = len(v)
            pairs = [(0, 1)] if e.kind == "pair" else [(i, i + 1) for i in range(n - 1)]
            for i, j in ([(j, i) for i, j in pairs] if reverse else pairs):
                run = lambda ids: sdpa_model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # noqa: E731
                want_p.append(run(v[i] + PRED_IDS[:k]).double().numpy())
                want_t.append(run(v[j]).double().numpy())
    np.testing.assert_allclose(pred, np.stack(want_p), atol=1e-5)
    np.testing.assert_allclose(target, np.stack(want_t), atol=1e-5)


def test_readouts_refuse_what_training_would_drop(sdpa_model):
    with pytest.raises(ValueError, match="example 1: .*longer than seq_len=16"):
        jepa_readouts(sdpa_model, [Example("pair", [[5, 6], [7, 8]]), Example("pair", [[5] * 9, [7] * 9])],
                      k=1, pred_ids=PRED_IDS, pad_id=PAD, seq_len=16)
    with pytest.raises(ValueError, match="example 0: a view without content"):
        jepa_readouts(sdpa_model, [Example("pair", [[5, 6], [7]])], k=1, pred_ids=PRED_IDS, pad_id=PAD,
                      seq_len=16, read_at="last")


def test_collapse_check_script_reports_these_metrics():
    script = load_script("collapse_check")
    rng = np.random.default_rng(2)
    pred, code = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    texts = [f"c{i % 4}" for i in range(12)]
    got = script.collapse_stats(pred, code, texts, seed=1)
    want = collapse_metrics(pred, code, seed=1)
    assert {k: got[k] for k in want} == want
    assert 0 <= got["top1"] <= 1 and got["top1_chance"] == 1 / 12
