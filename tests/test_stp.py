"""Semantic Tube Prediction: span sampling, the objective against the reference's formula on
each unpacked document (float64), zero extra tokens, split invariance, bad values."""
import collections
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megajepa import stp
from megajepa.layout import ANSWER, IGNORE_INDEX, PAD_DOC, TEXT, Example, layout_cost, pack
from megajepa.objective import forward, jepa_count

from conftest import PAD, PRED_IDS, random_examples, tiny_model


def plain(examples):
    """The examples as next-token training packs them (no JEPA segments)."""
    return [Example(e.kind, e.views, jepa=False) for e in examples]


def stp_batch(examples, seq_len=48, spec=stp.StpSpec(spans=3), seed=0, **kw):
    b = pack(plain(examples), seq_len, k=0, pred_ids=PRED_IDS, pad_id=PAD, **kw)
    b.stp = stp.sample(b.doc_ids, b.roles, spec, np.random.default_rng(seed))
    return b


# --- tubes and sampling ------------------------------------------------------------------

def test_tubes_of_lm_group_and_pair_documents():
    exs = [Example("lm", [[5, 6, 7, 8]]), Example("pair", [[2, 9, 10, 4], [11, 12, 3]]),
           Example("group", [[2, 13, 3], [2, 14, 15, 3]]), Example("lm", [[16, 17]])]
    b = pack(plain(exs), 32, k=0, pred_ids=PRED_IDS, pad_id=PAD, rows=[[0, 1, 2, 3]])
    tb = stp.tubes(b.doc_ids, b.roles)
    # lm [0,4), pair [4,11) with its text's last token (<sep> at 7) skipped, group views, short lm
    assert tb.base.tolist() == [0, 4, 11, 14, 18]
    assert tb.end.tolist() == [3, 10, 13, 17, 19]
    assert tb.gap.tolist() == [-1, 7, -1, -1, -1]
    assert tb.length.tolist() == [3, 5, 2, 3, 1]
    assert tb.doc.tolist() == [0, 1, 2, 3, 4] and (tb.row == 0).all()


def test_tubes_refuse_jepa_segments():
    b = pack(random_examples(4), 40, k=1, pred_ids=PRED_IDS, pad_id=PAD)
    with pytest.raises(ValueError, match="without JEPA segments"):
        stp.tubes(b.doc_ids, b.roles)


@pytest.mark.parametrize("sampler", stp.SAMPLERS)
@pytest.mark.parametrize("max_len", [None, 1, 3])
def test_sampled_spans_are_valid_and_deterministic(sampler, max_len):
    exs = random_examples(16, seed=7, max_len=12)
    b = pack(plain(exs), 64, k=0, pred_ids=PRED_IDS, pad_id=PAD)
    spec = stp.StpSpec(spans=4, sampler=sampler, max_len=max_len)
    one = stp.sample(b.doc_ids, b.roles, spec, stp.span_rng(3, 1, 5, 0))
    two = stp.sample(b.doc_ids, b.roles, spec, stp.span_rng(3, 1, 5, 0))
    other = stp.sample(b.doc_ids, b.roles, spec, stp.span_rng(3, 1, 6, 0))
    assert np.array_equal(one.bounds, two.bounds) and torch.equal(one.index, two.index)
    assert not np.array_equal(one.bounds, other.bounds)
    tb = stp.tubes(b.doc_ids, b.roles)
    L = dict(zip(zip(tb.row.tolist(), tb.doc.tolist()), tb.length.tolist()))
    s, t = one.bounds[:, 2], one.bounds[:, 3]
    lengths = np.array([L[(r, d)] for r, d in one.bounds[:, :2].tolist()])
    assert ((s >= 0) & (t > s) & (t <= lengths) & (t - s < lengths)).all()
    if max_len is not None:
        assert (t - s <= max_len).all()
    per_doc = collections.Counter(map(tuple, one.bounds[:, :2].tolist()))
    assert set(per_doc.values()) == {4}
    assert one.stats["skipped_short"] == int((tb.length < 2).sum())
    assert one.stats["documents"] == len(tb.length) and one.num_spans == 4 * len(per_doc)


def test_uniform_sampler_is_uniform_over_spans():
    spec = stp.StpSpec(spans=60000, sampler="uniform")
    s, t = stp.draw([5], spec, np.random.default_rng(0))
    counts = collections.Counter(zip(s.tolist(), t.tolist()))
    spans = [(a, b) for a in range(5) for b in range(a + 1, 6) if b - a < 5]
    assert set(counts) == set(spans)
    freq = np.array([counts[x] for x in spans]) / len(s)
    assert np.abs(freq * len(spans) - 1).max() < 0.05  # 14 spans, 4300 draws each


def test_start_sampler_matches_the_reference_distribution():
    """start uniform in [0, L); end uniform in [s+1, min(L, s+max_len)], never the whole tube."""
    L, m = 6, 3
    s, t = stp.draw([L], stp.StpSpec(spans=60000, max_len=m), np.random.default_rng(1))
    counts = collections.Counter(zip(s.tolist(), t.tolist()))
    for (a, b), c in counts.items():
        hi = min(L, a + m) if a else min(L - 1, m)
        assert a + 1 <= b <= hi
        assert abs(c / len(s) - 1 / L / (hi - a)) < 0.01


def test_short_documents_are_skipped_and_counted():
    exs = [Example("lm", [[5, 6]]), Example("lm", [[7]]), Example("lm", [[8, 9, 10]]),
           Example("pair", [[2, 4], [3]])]  # the pair: L = 3 - 2 = 1
    b = pack(plain(exs), 16, k=0, pred_ids=PRED_IDS, pad_id=PAD)
    sp = stp.sample(b.doc_ids, b.roles, stp.StpSpec(spans=2), np.random.default_rng(0))
    assert sp.stats["documents"] == 4 and sp.stats["skipped_short"] == 3 and sp.num_spans == 2
    none = stp.sample(b.doc_ids[:, :2], b.roles[:, :2], stp.StpSpec(), np.random.default_rng(0))
    assert none.num_spans == 0 and none.weight_sum == 0.0


@pytest.mark.parametrize("kw,match", [
    (dict(spans=0), "spans per document"), (dict(spans=-2), "spans per document"),
    (dict(spans=1.5), "spans per document"), (dict(spans=True), "spans per document"),
    (dict(sampler="draw_both"), "unknown STP span sampler"),
    (dict(max_len=0), "max span length"), (dict(max_len=-1), "max span length"),
    (dict(weighting="cosine"), "unknown STP length weighting"),
])
def test_bad_values_raise_one_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        stp.StpSpec(**kw)


def test_length_weights_are_the_references():
    L, span = np.array([10, 10, 4]), np.array([5, 2, 1])
    np.testing.assert_allclose(stp.length_weights(L, span, "cosine_like"), [1.0, 2 * 8 * 2 / 68, 2 * 3 / 10])
    np.testing.assert_allclose(stp.length_weights(L, span, "jaccard_like"), [1.0, 1 - 6 / 10, 1 - 2 / 4])
    assert (stp.length_weights(L, span, "none") == 1).all()


# --- the objective against the reference's formula, per unpacked document ----------------

def reference_loss(model64, batch, spans, weighting, predictor=None):
    """The reference's random-span loss written out on each document run alone in float64:
    user segment ``[us, ue)`` and assistant segment ``[as, ae)`` with the reference's index
    convention (``H(x) = h[x - 1]``), its three before/patch/after cases, its weights and
    ``1 - sum(w cos) / sum(w)``. lm / group documents are one segment (assistant empty)."""
    W = None if predictor is None else predictor.weight.detach().double()
    cache, num, den, coss = {}, 0.0, 0.0, []
    for row, doc, s, t in spans.bounds.tolist():
        if (row, doc) not in cache:
            pos = (batch.doc_ids[row] == doc).nonzero().squeeze(-1)
            ids = batch.input_ids[row, pos]
            with torch.no_grad():
                h = model64.base_model(input_ids=ids[None], use_cache=False).last_hidden_state[0]
            n, n_text = len(pos), int((batch.roles[row, pos] == TEXT).sum())
            if n_text < n and n_text >= 2:  # pair: user = up to the text's last token, exclusive
                user, assistant = (0, n_text - 2), (n_text - 1, n - 1)
            else:
                user, assistant = (0, n - 1), (n - 1, n - 1)
            cache[(row, doc)] = (h, user, assistant)
        h, (u0, u1), (a0, a1) = cache[(row, doc)]
        H = lambda x: h[x - 1]  # noqa: E731
        us, ue, as_, ae = u0 + 1, u1 + 1, a0 + 1, a1 + 1
        full = (ue - us) + (ae - as_)
        ps = us + s if s + us < ue else as_ + s - (ue - us)
        pe = us + t if t + us < ue else as_ + t - (ue - us)
        if ps >= as_:
            before, patch, after = H(ue) - H(us) + H(ps) - H(as_), H(pe) - H(ps), H(ae) - H(pe)
        elif pe <= ue:
            before, patch, after = H(ps) - H(us), H(pe) - H(ps), H(ue) - H(pe) + H(ae) - H(as_)
        else:
            before, patch, after = H(ps) - H(us), H(ue) - H(ps) + H(pe) - H(as_), H(ae) - H(pe)
        rest = before + after
        if W is not None:
            rest = W @ rest
        c = F.cosine_similarity(rest, patch, dim=0)
        rl, pl = full - (t - s), t - s
        w = {"none": 1.0, "cosine_like": 2 * rl * pl / (rl * rl + pl * pl),
             "jaccard_like": 1 - abs(rl - pl) / (rl + pl)}[weighting]
        num, den = num + w * c.item(), den + w
        coss.append(c.item())
    return 1 - num / den, float(np.mean(coss))


def corner_spans(batch, weighting):
    """Per document: the spans touching its first and its last token, one crossing a pair's
    gap, and the shortest ones at both ends."""
    tb = stp.tubes(batch.doc_ids, batch.roles)
    which, s, t = [], [], []
    for i, L in enumerate(tb.length.tolist()):
        if L < 2:
            continue
        cand = {(0, 1), (0, L - 1), (1, L), (L - 1, L), (L // 2, L)}
        if tb.gap[i] >= 0:
            q = int(tb.gap[i] - 1 - tb.base[i])  # boundary offset of the text's end
            cand |= {(max(q - 1, 0), min(q + 1, L)), (q, min(q + 1, L)), (max(q - 1, 0), q)}
        cand = {(a, b) for a, b in cand if 0 <= a < b <= L and b - a < L}
        for a, b in sorted(cand):
            which.append(i), s.append(a), t.append(b)
    return stp.build(tb, np.array(which), np.array(s), np.array(t), weighting)


@pytest.fixture(scope="module")
def models():
    m = tiny_model()
    return m, copy.deepcopy(m).double()


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("weighting", stp.WEIGHTINGS)
def test_stp_loss_equals_the_reference_on_unpacked_documents(models, weighting, kernels):
    model, model64 = models
    exs = random_examples(12, seed=8, max_len=10)
    b = pack(plain(exs), 48, k=0, pred_ids=PRED_IDS, pad_id=PAD)
    b.stp = corner_spans(b, weighting)
    assert (b.stp.bounds[:, 2] == 0).any() and b.stp.num_spans > 20
    with torch.no_grad():
        out = forward(model, b, objective="stp", lbd=0.5, kernels=kernels)
    want, want_cos = reference_loss(model64, b, b.stp, weighting)
    assert abs(out.jepa_loss.item() - want) < 1e-5
    assert abs(out.cosine.item() - want_cos) < 1e-5
    assert out.num_pairs == b.stp.num_spans
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.jepa_loss)


@pytest.mark.parametrize("sampler", stp.SAMPLERS)
def test_sampled_spans_with_predictor_equal_the_reference(models, sampler):
    model, model64 = models
    exs = random_examples(10, seed=9, max_len=10)
    b = stp_batch(exs, spec=stp.StpSpec(spans=4, sampler=sampler, weighting="cosine_like"), seed=2)
    tb = stp.tubes(b.doc_ids, b.roles)
    L = dict(zip(zip(tb.row.tolist(), tb.doc.tolist()), tb.length.tolist()))
    ends = [t == L[(r, d)] for r, d, _, t in b.stp.bounds.tolist()]
    assert any(ends) and (b.stp.bounds[:, 2] == 0).any()  # first and last token are touched
    torch.manual_seed(0)
    pred = stp.make_predictor(64)
    with torch.no_grad():
        out = forward(model, b, objective="stp", stp_predictor=pred)
    want, want_cos = reference_loss(model64, b, b.stp, "cosine_like", predictor=pred)
    assert abs(out.jepa_loss.item() - want) < 1e-5 and abs(out.cosine.item() - want_cos) < 1e-5


# --- zero extra tokens, LM loss unchanged, split invariance -------------------------------

def test_stp_rows_are_next_token_rows(models):
    """An STP batch computes exactly the next-token rows: the examples' tokens, nothing more,
    and the same LM loss and LM gradient as next-token training."""
    model, _ = models
    exs = random_examples(10, seed=10)
    b = stp_batch(exs)
    nt = pack(plain(exs), 48, k=0, pred_ids=PRED_IDS, pad_id=PAD)
    for name in ("input_ids", "position_ids", "doc_ids", "roles", "labels"):
        assert torch.equal(getattr(b, name), getattr(nt, name))
    real = int((b.doc_ids != PAD_DOC).sum())
    assert real == sum(layout_cost(e.kind, [len(v) for v in e.views], k=0, jepa=False) for e in exs)
    assert real == sum(e.num_tokens for e in exs) and b.num_pairs == 0

    def grads(batch, **kw):
        model.zero_grad()
        out = forward(model, batch, **kw)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    s_out, s_grad = grads(b, objective="stp", lbd=0.0)
    n_out, n_grad = grads(nt, lbd=0.0)
    assert s_out.lm_loss.item() == n_out.lm_loss.item() and s_out.jepa_loss.item() > 0
    assert s_grad.keys() == n_grad.keys()
    for n in n_grad:
        torch.testing.assert_close(s_grad[n], n_grad[n], atol=0, rtol=0)
    _, with_stp = grads(b, objective="stp", lbd=1.0)  # and the STP term does reach the model
    assert any(not torch.equal(with_stp[n], n_grad[n]) for n in n_grad)
    model.zero_grad()


def test_loader_batches_carry_resumable_spans(tmp_path):
    """With jepa_ratio=0 the loader's rows hold each example's views once; spans attached from
    (seed, epoch, step_in_epoch, rank) are the same after a resume."""
    from test_loader import loader, make_store

    st = make_store(tmp_path / "s", "pair", 60)
    spec = stp.StpSpec(spans=2, max_len=4)
    a = loader(st, jepa_ratio=0.0)
    first = [stp.attach(next(a), spec, seed=11) for _ in range(3)]
    b = loader(st, jepa_ratio=0.0)
    next(b)
    state = b.state_dict()
    c = loader(st, jepa_ratio=0.0)
    c.load_state_dict(state)
    resumed = [stp.attach(next(c), spec, seed=11) for _ in range(2)]
    for x, y in zip(first[1:], resumed):
        assert torch.equal(x.input_ids, y.input_ids)
        assert np.array_equal(x.stp.bounds, y.stp.bounds) and torch.equal(x.stp.index, y.stp.index)
    assert not np.array_equal(first[0].stp.bounds, first[1].stp.bounds)
    rows = a.rows_of(0, 0)
    views = [v for r in rows for i in r for v in st.example(i).views]
    assert int((first[0].doc_ids != PAD_DOC).sum()) == sum(len(v) for v in views)
    assert (first[0].roles != TEXT).sum() == (first[0].roles == ANSWER).sum()
    assert first[0].num_pairs == 0 and (first[0].labels != IGNORE_INDEX).any()


def test_split_invariance_1x4_equals_4x1():
    """One micro-batch of 4 examples or 4 micro-batches of 1, with the same spans per document
    and the global span weight as the denominator: the same loss and gradients (predictor too)."""
    model = tiny_model()
    torch.manual_seed(1)
    pred = stp.make_predictor(64)
    exs = random_examples(4, seed=12, max_len=9)
    spec = stp.StpSpec(spans=3, weighting="jaccard_like")
    full = stp_batch(exs, seq_len=64, spec=spec)
    parts = [pack(plain([e]), 64, k=0, pred_ids=PRED_IDS, pad_id=PAD) for e in exs]

    def key(batch, row, doc):
        return tuple(batch.input_ids[row, batch.doc_ids[row] == doc].tolist())

    chosen = collections.defaultdict(list)
    for row, doc, s, t in full.stp.bounds.tolist():
        chosen[key(full, row, doc)].append((s, t))
    assert len(chosen) == len(stp.tubes(full.doc_ids, full.roles).row) - full.stp.stats["skipped_short"]
    for p in parts:
        tb = stp.tubes(p.doc_ids, p.roles)
        which, s, t = [], [], []
        for i, (row, doc) in enumerate(zip(tb.row.tolist(), tb.doc.tolist())):
            for a, b in chosen.get(key(p, row, doc), []):
                which.append(i), s.append(a), t.append(b)
        p.stp = stp.build(tb, np.array(which, dtype=np.int64), np.array(s), np.array(t), spec.weighting)
    assert sum(p.stp.num_spans for p in parts) == full.stp.num_spans
    assert abs(sum(jepa_count(p, "stp") for p in parts) - jepa_count(full, "stp")) < 1e-9
    den = dict(lm_denominator=full.num_label_tokens, jepa_denominator=jepa_count(full, "stp"))
    params = list(model.parameters()) + list(pred.parameters())

    def run(batches):
        for p in params:
            p.grad = None
        total = 0.0
        for b in batches:
            loss = forward(model, b, objective="stp", stp_predictor=pred, lbd=0.7, **den).loss
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in params]

    one_loss, one = run([full])
    four_loss, four = run(parts)
    assert abs(one_loss - four_loss) < 1e-5
    for g1, g4 in zip(one, four):
        torch.testing.assert_close(g4, g1, atol=1e-6, rtol=1e-5)
    assert pred.weight.grad is not None and pred.weight.grad.abs().sum() > 0


def test_objective_refuses_bad_stp_settings(models):
    model, _ = models
    exs = random_examples(4, seed=13)
    b = stp_batch(exs)
    with pytest.raises(ValueError, match="objective must be one of"):
        forward(model, b, objective="tube")
    with pytest.raises(ValueError, match="single_pass"):
        forward(model, b, objective="stp", mode="three_pass")
    with pytest.raises(ValueError, match="cosine"):
        forward(model, b, objective="stp", distance="l2")
    with pytest.raises(ValueError, match="stopgrad_target"):
        forward(model, b, objective="stp", stopgrad_target=True)
    nt = pack(plain(exs), 48, k=0, pred_ids=PRED_IDS, pad_id=PAD)
    with pytest.raises(ValueError, match="needs spans"):
        forward(model, nt, objective="stp")
    jepa = pack(exs, 64, k=1, pred_ids=PRED_IDS, pad_id=PAD)
    jepa.stp = b.stp
    with pytest.raises(ValueError, match="without JEPA segments"):
        forward(model, jepa, objective="stp")


def test_batch_without_spans_is_finite(models):
    model, _ = models
    b = stp_batch([Example("lm", [[5, 6]]), Example("lm", [[7, 8]])], seq_len=8)
    assert b.stp.num_spans == 0
    out = forward(model, b, objective="stp")
    out.loss.backward()
    assert out.jepa_loss.item() == 0.0 and torch.isfinite(out.loss)
    model.zero_grad()


@pytest.mark.parametrize("kind", ["pair", "group", "lm"])
def test_store_tube_lengths_equal_the_packed_tubes(kind):
    """The store-level tube lengths (used to refuse an all-short store before training) equal
    the tubes of the packed rows, including one-token views and one-token pair texts."""
    rng = np.random.default_rng(3)
    n_views = {"pair": 2, "lm": 1, "group": 3}[kind]
    exs = [Example(kind, [rng.integers(5, 90, size=int(rng.integers(1, 7))).tolist()
                          for _ in range(n_views)]) for _ in range(40)]
    lengths = [len(v) for e in exs for v in e.views]
    offsets = np.cumsum([0] + [len(e.views) for e in exs])
    b = pack(plain(exs), 512, k=0, pred_ids=PRED_IDS, pad_id=PAD)
    got = stp.store_tube_lengths(kind, lengths, offsets)
    assert sorted(got.tolist()) == sorted(stp.tubes(b.doc_ids, b.roles).length.tolist())
    assert (got < 2).any() and (got >= 2).any()
