"""``read_at="last"``: the layout of the module docstring, its cost, and the DESIGN
invariants (packed == unpacked, LM loss untouched, single pass == three pass == a hand-built
paper formulation that reads every view at its last content token)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from megajepa import Example, forward, pack
from megajepa.layout import (ANSWER, IGNORE_INDEX, PAD_DOC, PRED, TEXT, example_cost,
                             layout_example, truncate_to_fit)
from megajepa.loader import vector_costs

from conftest import PAD, PRED_IDS, random_examples

LAST = dict(read_at="last")


def alone(model, tokens):
    """Last hidden state of ``tokens`` run on their own (no mask, no packing)."""
    ids = torch.tensor([tokens])
    return model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, -1]


def test_pair_layout_is_the_drawn_one():
    ex = Example("pair", [[10, 11, 12], [20, 21, 22]])          # 12 and 22 are end tokens
    b = pack([ex], 16, k=2, pred_ids=[90, 91], pad_id=0, **LAST)
    n = int((b.doc_ids[0] != PAD_DOC).sum())
    T, A, P, I = TEXT, ANSWER, PRED, IGNORE_INDEX
    assert b.input_ids[0, :n].tolist() == [10, 11, 12, 20, 21, 22, 90, 91, 20, 21]
    assert b.roles[0, :n].tolist() == [T, T, A, A, A, A, P, P, T, T]
    assert b.position_ids[0, :n].tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 0, 1]
    assert b.labels[0, :n].tolist() == [I, I, 20, 21, 22, I, I, I, I, I]
    assert b.pred_index.tolist() == [7] and b.target_index.tolist() == [9]
    assert n == example_cost(ex, k=2, **LAST) == 3 + 2 * 3 - 1 + 2
    k0 = pack([ex], 16, k=0, pred_ids=[], pad_id=0, **LAST)
    assert k0.pred_index.tolist() == [1] and k0.target_index.tolist() == [7]   # t1, and c1 in B
    assert (k0.roles[0, :3] == TEXT).all()                     # no predictors: nothing to hide
    rev = pack([ex], 16, k=2, pred_ids=[90, 91], pad_id=0, reverse=True, **LAST)
    m = int((rev.doc_ids[0] != PAD_DOC).sum())
    assert rev.input_ids[0, :m].tolist() == [10, 11, 12, 20, 21, 22, 20, 21, 90, 91]
    assert rev.position_ids[0, 6:m].tolist() == [0, 1, 2, 3]
    assert rev.pred_index.tolist() == [9] and rev.target_index.tolist() == [1]


def test_group_layout_reads_content_and_hides_the_end_from_predictors():
    ex = Example("group", [[1, 2, 3], [4, 5], [6, 7, 8]])
    lay = layout_example(ex, k=2, pred_ids=[90, 91], **LAST)
    d0 = lay.docs[0]
    assert d0.tokens == [1, 2, 3, 90, 91] and d0.roles == [TEXT, TEXT, ANSWER, PRED, PRED]
    assert d0.positions == [0, 1, 2, 2, 3] and d0.labels == [2, 3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert lay.docs[2].roles == [TEXT] * 3                     # not a source with "next" pairs
    assert lay.pairs == [((0, 4), (1, 0)), ((1, 3), (2, 1))]


def test_views_without_content_are_dropped_and_counted():
    short = Example("pair", [[5, 6], [7]])
    with pytest.raises(ValueError, match="read_at='last'"):
        layout_example(short, k=1, pred_ids=[90], **LAST)
    b = pack([short, Example("pair", [[5, 6], [7, 8]]), Example("pair", [[5], [7]], jepa=False)],
             16, k=1, pred_ids=[90], pad_id=0, **LAST)
    assert b.stats["too_short"] == 1 and b.num_pairs == 1
    assert pack([short], 16, k=1, pred_ids=[90], pad_id=0).num_pairs == 1   # "end" reads it
    with pytest.raises(ValueError, match="read_at"):
        pack([short], 16, k=1, pred_ids=[90], pad_id=0, read_at="middle")


@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.lists(st.integers(2, 9), min_size=1, max_size=4), min_size=1, max_size=8),
       k=st.integers(0, 3), reverse=st.booleans(), jepa_pairs=st.sampled_from(["next", "all"]),
       seq_len=st.integers(12, 40), jepa=st.lists(st.booleans(), min_size=8, max_size=8))
def test_costs_match_the_packed_tokens(lens, k, reverse, jepa_pairs, seq_len, jepa):
    """example_cost == tokens placed; the loader's vectorized costs agree (its affine check
    holds); truncation under read_at=last always fits and keeps content in every view."""
    kw = dict(k=k, reverse=reverse, jepa_pairs=jepa_pairs, **LAST)
    for kind in ("pair", "group"):
        exs = []
        for i, ls in enumerate(lens):
            ls = (ls * 2)[:2] if kind == "pair" else (ls if len(ls) > 1 else ls * 2)
            exs.append(Example(kind, [[100 + j for j in range(m)] for m in ls], jepa=jepa[i]))
        for ex in exs:
            b = pack([ex], 64, pred_ids=PRED_IDS, pad_id=PAD, **kw)
            assert int((b.doc_ids != PAD_DOC).sum()) == example_cost(ex, **kw)
            cut = truncate_to_fit(ex, seq_len, **kw)
            if cut is not None:
                assert example_cost(cut, **kw) <= seq_len and min(map(len, cut.views)) >= 2
        view_lengths = np.array([len(v) for ex in exs for v in ex.views])
        offsets = np.cumsum([0] + [len(ex.views) for ex in exs])
        got = vector_costs(kind, view_lengths, offsets, np.array([ex.jepa for ex in exs]), **kw)
        assert got.tolist() == [example_cost(ex, **kw) for ex in exs]


def hand_last(model, exs, k, reverse=False, jepa_pairs="next"):
    """The paper's formulation read at the last content token: Pred = (source content + k
    predictors) run alone, Enc = target content run alone; (mean 1 - cos, mean cos)."""
    preds, tgts = [], []
    for e in exs:
        if not e.jepa or e.kind == "lm":
            continue
        v = [list(x)[:-1] for x in e.views]                    # content: drop the end token
        if e.kind == "pair":
            pairs = [(1, 0)] if reverse else [(0, 1)]
        else:
            n = len(v)
            pairs = ([(i, i + 1) for i in range(n - 1)] if jepa_pairs == "next"
                     else [(i, j) for i in range(n) for j in range(n) if i != j])
            pairs = [(j, i) for i, j in pairs] if reverse else pairs
        for i, j in pairs:
            preds.append(alone(model, v[i] + PRED_IDS[:k]))
            tgts.append(alone(model, v[j]))
    cos = F.cosine_similarity(torch.stack(preds).double(), torch.stack(tgts).double(), dim=-1)
    return (1 - cos).mean().item(), cos.mean().item()


@pytest.mark.parametrize("k,reverse,jepa_pairs", [(0, False, "next"), (1, False, "next"),
                                                  (3, False, "all"), (2, True, "next"),
                                                  (0, True, "all")])
def test_single_pass_equals_three_pass_and_hand(sdpa_model, k, reverse, jepa_pairs):
    exs = random_examples(9, seed=7)
    b = pack(exs, 48, k=k, pred_ids=PRED_IDS, pad_id=PAD, reverse=reverse, jepa_pairs=jepa_pairs,
             **LAST)
    assert b.stats["too_short"] == 0 and b.input_ids.shape[0] > 1
    with torch.no_grad():
        one = forward(sdpa_model, b, lbd=2.0, gamma=0.5)
        three = forward(sdpa_model, b, lbd=2.0, gamma=0.5, mode="three_pass")
        want, want_cos = hand_last(sdpa_model, exs, k, reverse=reverse, jepa_pairs=jepa_pairs)
    for name in ("loss", "lm_loss", "jepa_loss", "cosine"):
        torch.testing.assert_close(getattr(one, name), getattr(three, name), atol=2e-5, rtol=2e-5)
    assert abs(one.jepa_loss.item() - want) < 1e-4 and abs(one.cosine.item() - want_cos) < 1e-4
    end = forward(sdpa_model, pack(exs, 48, k=k, pred_ids=PRED_IDS, pad_id=PAD, reverse=reverse,
                                   jepa_pairs=jepa_pairs))
    assert abs(end.jepa_loss.item() - one.jepa_loss.item()) > 1e-4      # it reads elsewhere


@pytest.mark.parametrize("k", [0, 2])
def test_packed_hidden_equals_unpacked_and_lm_loss_unchanged(sdpa_model, k):
    """Invariants 1 and 2: every real position equals its logical sequence run alone (main
    stream: the non-PRED tokens; predictor stream: what the predictors see), and the LM loss
    equals that of the same examples packed without JEPA."""
    exs = random_examples(10, seed=8)
    b = pack(exs, 40, k=k, pred_ids=PRED_IDS, pad_id=PAD, **LAST)
    plain = pack([Example(e.kind, e.views, jepa=False) for e in exs], 40, k=k, pred_ids=PRED_IDS,
                 pad_id=PAD, **LAST)
    with torch.no_grad():
        out = forward(sdpa_model, b, return_hidden=True)
        torch.testing.assert_close(out.lm_loss, forward(sdpa_model, plain).lm_loss, atol=1e-5, rtol=1e-5)
        checked = 0
        for r in range(b.input_ids.shape[0]):
            docs, roles = b.doc_ids[r], b.roles[r]
            for d in torch.unique(docs).tolist():
                if d == PAD_DOC:
                    continue
                main = ((docs == d) & (roles != PRED)).nonzero().squeeze(-1)
                seen = ((docs == d) & ((roles == TEXT) | (roles == PRED))).nonzero().squeeze(-1)
                for pos, only in ((main, None), (seen, PRED)):
                    if only is not None and not (roles[pos] == only).any():
                        continue
                    assert torch.equal(b.position_ids[r, pos], torch.arange(len(pos)))
                    ids = b.input_ids[r, pos].tolist()
                    h = sdpa_model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
                    for j, p in enumerate(pos.tolist()):
                        if only is None or int(roles[p]) == only:
                            torch.testing.assert_close(out.hidden[r, p], h[j], atol=1e-5, rtol=1e-5)
                            checked += 1
    assert checked == int((b.doc_ids != PAD_DOC).sum())
