"""Packer properties (hypothesis) and the overflow rule."""
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megajepa.layout import (ANSWER, IGNORE_INDEX, PAD_DOC, PRED, TEXT, Example, example_cost,
                             pack, plan_rows, sample_jepa, truncate_to_fit)

PREDS = [9001, 9002, 9003]


@st.composite
def example_lists(draw):
    n = draw(st.integers(1, 12))
    exs = []
    for e in range(n):
        kind = draw(st.sampled_from(["pair", "group", "lm"]))
        nv = {"pair": 2, "lm": 1}.get(kind) or draw(st.integers(2, 4))
        lens = [draw(st.integers(1, 12)) for _ in range(nv)]
        # Token ids encode (example, view, index) so every token can be traced back.
        views = [[100000 * (e + 1) + 1000 * v + j for j in range(m)] for v, m in enumerate(lens)]
        exs.append(Example(kind, views, jepa=draw(st.booleans())))
    return exs


def expected_counts(ex, k, jepa_pairs):
    """How often each token of ``ex`` must appear in the packed rows (the layout contract)."""
    c = Counter()
    jepa = ex.jepa and ex.kind != "lm"
    for v, view in enumerate(ex.views):
        times = 2 if (ex.kind == "pair" and jepa and v == 1) else 1
        for t in view:
            c[t] += times
    if jepa:
        n = len(ex.views)
        sources = 1 if ex.kind == "pair" else (n - 1 if jepa_pairs == "next" else n)
        for p in PREDS[:k]:
            c[p] += sources
    return c


@settings(max_examples=60, deadline=None)
@given(exs=example_lists(), k=st.integers(0, 3), seq_len=st.integers(8, 64),
       jepa_pairs=st.sampled_from(["next", "all"]), reverse=st.booleans(),
       window=st.integers(1, 8))
def test_pack_properties(exs, k, seq_len, jepa_pairs, reverse, window):
    kw = dict(k=k, pred_ids=PREDS, pad_id=0, jepa_pairs=jepa_pairs, reverse=reverse,
              window=window)
    b = pack(exs, seq_len, **kw)
    assert b.input_ids.shape[1] == seq_len  # rows never over seq_len
    placed = [ex for ex in exs if example_cost(ex, k=k, jepa_pairs=jepa_pairs) <= seq_len]
    assert b.stats["dropped"] == len(exs) - len(placed)

    # No token lost or duplicated: exact multiset of real tokens.
    want = Counter()
    for ex in placed:
        want += expected_counts(ex, k, jepa_pairs)
    real = b.doc_ids != PAD_DOC
    got = Counter(b.input_ids[real].tolist())
    assert got == want
    assert b.stats["real_tokens"] == sum(want.values())

    # Nothing split across rows: each example's tokens live in exactly one row.
    owner_rows = {}
    for r in range(b.input_ids.shape[0]):
        for t in b.input_ids[r][real[r]].tolist():
            if t > 9999:
                owner_rows.setdefault(t // 100000, set()).add(r)
    assert all(len(rows) == 1 for rows in owner_rows.values())

    # Labels never cross a document, and padding carries no loss.
    ids, docs, labels = b.input_ids, b.doc_ids, b.labels
    has = labels != IGNORE_INDEX
    assert not (has & ~real).any()
    rr, cc = has.nonzero(as_tuple=True)
    assert (cc < seq_len - 1).all()
    assert torch.equal(labels[rr, cc], ids[rr, cc + 1])
    assert torch.equal(docs[rr, cc], docs[rr, cc + 1])
    assert not (has & (b.roles == PRED)).any()

    # JEPA read-outs: one per pair, inside real tokens, pred side at a PRED (or the source
    # view's last token when k == 0), target side at a TEXT token.
    flat_docs, flat_roles = docs.reshape(-1), b.roles.reshape(-1)
    assert (flat_docs[b.pred_index] != PAD_DOC).all() and (flat_docs[b.target_index] != PAD_DOC).all()
    assert (flat_roles[b.target_index] == TEXT).all()
    assert (flat_roles[b.pred_index] == (PRED if k else TEXT)).all()
    n_pairs = 0
    for ex in placed:
        if ex.jepa and ex.kind == "pair":
            n_pairs += 1
        elif ex.jepa and ex.kind == "group":
            n = len(ex.views)
            n_pairs += n - 1 if jepa_pairs == "next" else n * (n - 1)
    assert b.num_pairs == n_pairs

    # Deterministic.
    b2 = pack(exs, seq_len, **kw)
    for name in ("input_ids", "position_ids", "doc_ids", "roles", "labels", "pred_index",
                 "target_index"):
        assert torch.equal(getattr(b, name), getattr(b2, name))


@settings(max_examples=100, deadline=None)
@given(costs=st.lists(st.integers(0, 40), max_size=40), seq_len=st.integers(1, 40),
       window=st.integers(1, 50))
def test_plan_rows_is_a_partition(costs, seq_len, window):
    rows = plan_rows(costs, seq_len, window=window)
    flat = [i for r in rows for i in r]
    assert len(flat) == len(set(flat))
    assert set(flat) == {i for i, c in enumerate(costs) if 0 < c <= seq_len}
    assert all(sum(costs[i] for i in r) <= seq_len for r in rows)
    assert rows == plan_rows(costs, seq_len, window=window)


def test_best_fit_fills_rows():
    # 6+4 and 7+3 and 5+5 fit exactly into rows of 10.
    rows = plan_rows([6, 7, 5, 4, 3, 5], 10)
    assert sorted(map(sorted, rows)) == [[0, 3], [1, 4], [2, 5]]


def test_pair_layout_positions_and_roles():
    b = pack([Example("pair", [[1, 2, 3], [4, 5]])], 12, k=2, pred_ids=[7, 8], pad_id=0)
    assert b.input_ids[0].tolist() == [1, 2, 3, 4, 5, 7, 8, 4, 5, 0, 0, 0]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 0, 1, 0, 0, 0]
    assert b.roles[0].tolist() == [TEXT] * 3 + [ANSWER] * 2 + [PRED] * 2 + [TEXT] * 5
    assert b.labels[0].tolist()[:5] == [IGNORE_INDEX, IGNORE_INDEX, 4, 5, IGNORE_INDEX]
    assert b.doc_ids[0].tolist() == [0] * 7 + [1] * 2 + [PAD_DOC] * 3
    assert b.pred_index.tolist() == [6] and b.target_index.tolist() == [8]
    # reverse: predictors follow the code alone; the target is the text's last token.
    r = pack([Example("pair", [[1, 2, 3], [4, 5]])], 12, k=2, pred_ids=[7, 8], pad_id=0,
             reverse=True)
    assert r.input_ids[0].tolist()[:9] == [1, 2, 3, 4, 5, 4, 5, 7, 8]
    assert r.position_ids[0].tolist()[:9] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert r.pred_index.tolist() == [8] and r.target_index.tolist() == [2]


def test_overflow_drop_and_truncate_rule():
    long = Example("pair", [list(range(1, 11)) + [50], [20, 21, 22, 51]])  # cost 11+8+1 = 20
    short = Example("lm", [[1, 2, 3]])
    dropped = pack([long, short], 12, k=1, pred_ids=[7], pad_id=0, overflow="drop")
    assert dropped.stats["dropped"] == 1 and dropped.stats["truncated"] == 0
    assert 50 not in dropped.input_ids.tolist()[0]
    cut = truncate_to_fit(long, 12, k=1)
    # The longest view loses the token before its end token until the example fits.
    assert example_cost(cut, k=1) == 12
    assert cut.views[0] == [1, 2, 50] and cut.views[1] == [20, 21, 22, 51]
    tr = pack([long, short], 12, k=1, pred_ids=[7], pad_id=0, overflow="truncate")
    assert tr.stats["truncated"] == 1 and tr.stats["dropped"] == 0
    # Impossible even after truncation (views would fall below 2 tokens): dropped.
    assert truncate_to_fit(long, 4, k=1) is None
    imp = pack([long], 4, k=1, pred_ids=[7], pad_id=0, overflow="truncate")
    assert imp.stats["dropped"] == 1


def test_jepa_ratio_dropout_costs_nothing():
    exs = [Example("pair", [[1, 2, 3], [4, 5]]) for _ in range(200)]
    none = sample_jepa(exs, 0.0, random.Random(0))
    assert pack(none, 64, k=2, pred_ids=[7, 8], pad_id=0).stats["real_tokens"] == 200 * 5
    half = sample_jepa(exs, 0.5, random.Random(0))
    frac = sum(e.jepa for e in half) / len(half)
    assert 0.35 < frac < 0.65
    assert [e.jepa for e in half] == [e.jepa for e in sample_jepa(exs, 0.5, random.Random(0))]
    b = pack(half, 64, k=2, pred_ids=[7, 8], pad_id=0)
    assert b.num_pairs == sum(e.jepa for e in half)


def test_bad_examples_are_refused():
    with pytest.raises(ValueError, match="exactly 2"):
        Example("pair", [[1, 2]])
    with pytest.raises(ValueError, match="empty"):
        Example("group", [[1], []])
    with pytest.raises(ValueError, match="kind"):
        Example("triple", [[1]])
    with pytest.raises(ValueError, match="predictor"):
        pack([Example("pair", [[1, 2], [3, 4]])], 16, k=3, pred_ids=[7], pad_id=0)
