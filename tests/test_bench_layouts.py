"""scripts/bench/layouts.py counts what the packer and the objective really compute.

The token/row formulas of the benchmark are checked against ``pack()``'s stats and against
the tokens the objective's forwards actually run (single pass and the three-pass oracle);
its pre-packed and padded three-pass steps must give the single-pass loss. Data: the
embedded NL-RX generator with a character-level toy tokenizer (no files, no training).
"""
from pathlib import Path

import pytest
import torch

from data_tools import nlrx
from megajepa import objective
from megajepa.layout import Example, pack
from conftest import PAD, PRED_IDS, load_script, tiny_model

ROOT = Path(__file__).resolve().parents[1]
bl = load_script("bench/layouts")

K = 3


def _views(n, seed=0):
    """(text, code) token ids: <s>=2 chars <sep>=4 | chars </s>=3, chars mapped into 10..99."""
    enc = lambda s: [10 + ord(ch) % 90 for ch in s]  # noqa: E731
    return [([2] + enc(r["description"])[:20] + [4], enc(r["regex"])[:12] + [3])
            for r in nlrx.generate_pairs(n, seed=seed)]


@pytest.mark.parametrize("seq_len", [64, 200])
def test_counts_match_pack(seq_len):
    views = _views(40)
    pairs = [(len(t), len(c)) for t, c in views]
    got = bl.layout_counts(pairs, seq_len, K, pad_len=48)
    kw = dict(k=K, pred_ids=PRED_IDS, pad_id=PAD)
    for key, jepa in (("a", False), ("b", True)):
        st = pack([Example("pair", v, jepa=jepa) for v in views], seq_len, **kw).stats
        assert (got[key]["real"], got[key]["rows"]) == (st["real_tokens"], st["rows"])
    preds = PRED_IDS[:K]
    passes = [[Example("pair", v, jepa=False) for v in views],
              [Example("lm", [t + preds]) for t, _ in views],
              [Example("lm", [c]) for _, c in views]]
    stats = [pack(p, seq_len, **kw).stats for p in passes]
    assert got["c"]["real"] == sum(s["real_tokens"] for s in stats)
    assert got["c"]["rows"] == sum(s["rows"] for s in stats)
    assert got["c"]["real"] == sum(2 * t + 2 * c + K for t, c in pairs)
    assert got["d"] == dict(real=got["c"]["real"], rows=3 * len(views), capacity=3 * len(views) * 48,
                            dropped=0)


def test_counts_are_what_the_objective_computes(monkeypatch):
    """Non-padding tokens fed to the model by forward() equal the (b) and (c) counts."""
    views = _views(12, seed=1)
    pairs = [(len(t), len(c)) for t, c in views]
    got = bl.layout_counts(pairs, 128, K)
    seen = []
    real = objective.hidden_states

    def counting(model, input_ids, position_ids, doc_ids, roles):
        seen.append(int((doc_ids != -1).sum()))
        return real(model, input_ids, position_ids, doc_ids, roles)

    monkeypatch.setattr(objective, "hidden_states", counting)
    model = tiny_model()
    batch = pack([Example("pair", v) for v in views], 128, k=K, pred_ids=PRED_IDS, pad_id=PAD)
    with torch.no_grad():
        objective.forward(model, batch, mode="single_pass")
        assert seen == [got["b"]["real"]]
        seen.clear()
        objective.forward(model, batch, mode="three_pass")
    assert len(seen) == 3 and sum(seen) == got["c"]["real"]


@pytest.mark.parametrize("padded", [False, True])
def test_three_pass_step_equals_single_pass(padded):
    views = _views(10, seed=2)
    model = tiny_model()
    batch = pack([Example("pair", v) for v in views], 128, k=K, pred_ids=PRED_IDS, pad_id=PAD)
    passes, p_idx, t_idx = bl.build_three_passes(views, K, PRED_IDS, PAD, 48 if padded else 128,
                                                 padded=padded)
    if padded:
        assert [b.shape for b in passes] == [(len(views), 48)] * 3
    with torch.no_grad():
        want = objective.forward(model, batch).loss
        got = bl.three_pass_step(model, passes, p_idx, t_idx)
        wrong = bl.three_pass_step(model, passes, p_idx, t_idx.flip(0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert abs(float(wrong) - float(want)) > 1e-4
