"""DESIGN §2 invariants and the objective's arithmetic, against unpacked oracles.

1. every packed hidden state equals the hidden state of its logical sequence run alone;
2. the next-token loss of a JEPA batch equals that of the same examples without JEPA
   (and plain full-logits cross-entropy over each example run alone);
3. the single-pass JEPA loss equals the three-pass loss and a hand-built one.

Two oracles here owe nothing to ``masking.py``: ``run_alone`` (a plain causal forward of one
sequence, no mask) and the ``hand_*`` helpers, which build every logical sequence from the
:class:`Example` itself (the three-pass mode builds its sequences with the production
``allowed()`` rule, so it cannot catch a wrong rule). The loss paths run under both
``kernels="auto"`` (the Triton cosine under ``TRITON_INTERPRET=1``) and ``"reference"``.
"""
import pytest
import torch
import torch.nn.functional as F

from megajepa import Example, forward, pack
from megajepa.layout import ANSWER, IGNORE_INDEX, PAD_DOC, PRED, TEXT, example_cost
from megajepa.objective import DISTANCES

from conftest import PAD, PRED_IDS, VOCAB, random_examples, tiny_model

KERNELS = ["auto", "reference"]


def run_alone(model, tokens):
    """Hidden states of one sequence, unpacked, default causal attention, no mask."""
    ids = torch.tensor([tokens])
    return model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]


def streams(batch):
    """Each document's logical sequences: main (non-PRED tokens) and text+predictors."""
    for r in range(batch.input_ids.shape[0]):
        docs, roles = batch.doc_ids[r], batch.roles[r]
        for d in torch.unique(docs).tolist():
            if d == PAD_DOC:
                continue
            main = ((docs == d) & (roles != PRED)).nonzero().squeeze(-1)
            yield r, main
            if ((docs == d) & (roles == PRED)).any():
                yield r, ((docs == d) & ((roles == TEXT) | (roles == PRED))).nonzero().squeeze(-1)


def batch_for(k, seed=0, n=10, seq_len=40, **kw):
    return pack(random_examples(n, seed=seed), seq_len, k=k, pred_ids=PRED_IDS, pad_id=PAD,
                min_rows=0, **kw)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_invariant1_packed_hidden_equals_unpacked(sdpa_model, k):
    b = batch_for(k)
    assert b.input_ids.shape[0] > 1  # several rows
    with torch.no_grad():
        hidden = forward(sdpa_model, b, return_hidden=True).hidden
        assert torch.isfinite(hidden).all()
        checked = 0
        for r, pos in streams(b):
            assert torch.equal(b.position_ids[r, pos], torch.arange(len(pos)))
            alone = run_alone(sdpa_model, b.input_ids[r, pos].tolist())
            # a position's view: only tokens at or before it in its own stream matter
            for j, p in enumerate(pos.tolist()):
                role = int(b.roles[r, p])
                in_main = role != PRED
                is_main_stream = not (b.roles[r, pos] == PRED).any()
                if in_main == is_main_stream:
                    torch.testing.assert_close(hidden[r, p], alone[j], atol=1e-5, rtol=1e-5)
                    checked += 1
        assert checked == int((b.doc_ids != PAD_DOC).sum())


@pytest.mark.slow
def test_invariant1_flex_attention_backend():
    """The FlexAttention path (transformers compiles it; ~30 s on CPU) equals SDPA."""
    sdpa, flex = tiny_model("sdpa"), tiny_model("flex_attention")
    b = batch_for(2, seq_len=64)
    with torch.no_grad():  # FlexAttention has no CPU backward
        hs = forward(sdpa, b, return_hidden=True)
        hf = forward(flex, b, return_hidden=True)
    real = b.doc_ids != PAD_DOC
    torch.testing.assert_close(hf.hidden[real], hs.hidden[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf.loss, hs.loss, atol=1e-5, rtol=1e-5)


def test_eager_backend_agrees(sdpa_model):
    eager = tiny_model("eager")
    b = batch_for(2)
    with torch.no_grad():
        a = forward(sdpa_model, b, return_hidden=True)
        e = forward(eager, b, return_hidden=True)
    real = b.doc_ids != PAD_DOC
    torch.testing.assert_close(e.hidden[real], a.hidden[real], atol=1e-5, rtol=1e-5)


# --- hand-built oracles: every logical sequence from the Example, no masking.py ---------

def hand_lm_sequences(ex, lm_on_all=False):
    """``(tokens, first labelled index)`` of each next-token sequence of ``ex``."""
    if ex.kind == "pair":
        text, code = (list(v) for v in ex.views)
        return [(text + code, 1 if lm_on_all else len(text))]
    return [(list(v), 1) for v in ex.views]


def hand_jepa_sequences(ex, k, reverse=False, jepa_pairs="next"):
    """``(source view + k predictors, target view)`` of each JEPA pair of ``ex``, in order."""
    if not ex.jepa or ex.kind == "lm":
        return []
    v = [list(x) for x in ex.views]
    if ex.kind == "pair":
        pairs = [(0, 1)]
    else:
        n = len(v)
        pairs = [(i, i + 1) for i in range(n - 1)] if jepa_pairs == "next" else \
            [(i, j) for i in range(n) for j in range(n) if i != j]
    if reverse:
        pairs = [(j, i) for i, j in pairs]
    return [(v[i] + PRED_IDS[:k], v[j]) for i, j in pairs]


def hand_lm(model, exs, lm_on_all=False):
    """(summed full-logits cross-entropy, label count) of each sequence run alone."""
    total, count = 0.0, 0
    for e in exs:
        for seq, start in hand_lm_sequences(e, lm_on_all):
            logits = model(input_ids=torch.tensor([seq])).logits[0].double()
            tgt = torch.tensor(seq[start:])
            total += F.cross_entropy(logits[start - 1:-1], tgt, reduction="sum").item()
            count += len(tgt)
    return total, count


def hand_reads(model, exs, k, reverse=False, jepa_pairs="next"):
    """Pred and target read-outs ``[pairs, D]``: last hidden state of each sequence run alone."""
    preds, tgts = [], []
    for e in exs:
        for src, tgt in hand_jepa_sequences(e, k, reverse, jepa_pairs):
            preds.append(run_alone(model, src)[-1])
            tgts.append(run_alone(model, tgt)[-1])
    return torch.stack(preds), torch.stack(tgts)


def distance64(p, t, distance, tau=0.07):
    """Per-pair distance in float64 (the definitions of objective.py's docstring)."""
    p, t = p.double(), t.double()
    return {"cosine": lambda: 1 - F.cosine_similarity(p, t, dim=-1),
            "l2": lambda: (p - t).norm(dim=-1),
            "mse": lambda: (p - t).pow(2).mean(-1),
            "infonce": lambda: F.cross_entropy(F.normalize(p, dim=-1) @ F.normalize(t, dim=-1).T / tau,
                                               torch.arange(len(p)), reduction="none")}[distance]()


def hand_jepa(model, exs, k, distance, reverse=False, jepa_pairs="next", tau=0.07):
    """The paper's formulation by hand: Pred = (source view + k predictors) run alone,
    Enc = target view run alone; float64 distances. Returns (mean d, mean cosine)."""
    p, t = hand_reads(model, exs, k, reverse, jepa_pairs)
    cos = F.cosine_similarity(p.double(), t.double(), dim=-1)
    return distance64(p, t, distance, tau).mean().item(), cos.mean().item()


def in_order_rows(exs, seq_len, **kw):
    """A row plan that keeps the examples in index order (first fit, no sorting), so the
    packed read-outs come in the order the hand oracle lists them."""
    rows, used = [[]], 0
    for i, e in enumerate(exs):
        c = example_cost(e, k=kw["k"], jepa_pairs=kw.get("jepa_pairs", "next"),
                         reverse=kw.get("reverse", False))
        if used + c > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += c
    return rows


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("k,reverse,jepa_pairs", [(0, False, "next"), (2, False, "next"),
                                                  (3, True, "all")])
def test_single_pass_equals_hand_built_unpacked_sequences(sdpa_model, k, reverse, jepa_pairs,
                                                          kernels):
    """The oracle that owes nothing to masking.py: every read-out vector and both losses of
    the single pass equal plain causal forwards of sequences built from the Examples."""
    exs = random_examples(10, seed=6)
    kw = dict(k=k, reverse=reverse, jepa_pairs=jepa_pairs)
    b = pack(exs, 64, pred_ids=PRED_IDS, pad_id=PAD, rows=in_order_rows(exs, 64, **kw), **kw)
    assert b.input_ids.shape[0] > 1
    with torch.no_grad():
        out = forward(sdpa_model, b, return_hidden=True, kernels=kernels)
        flat = out.hidden.reshape(-1, out.hidden.shape[-1])
        preds, tgts = hand_reads(sdpa_model, exs, **kw)
        ce, count = hand_lm(sdpa_model, exs)
    assert b.num_pairs == len(preds) and out.num_label_tokens == count
    torch.testing.assert_close(flat[b.pred_index], preds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat[b.target_index], tgts, atol=1e-5, rtol=1e-5)
    assert abs(out.lm_loss.item() - ce / count) < 1e-5
    assert abs(out.jepa_loss.item() - distance64(preds, tgts, "cosine").mean().item()) < 1e-5


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_invariant2_lm_loss_unchanged_by_jepa(sdpa_model, k, kernels):
    exs = random_examples(10, seed=1)
    with torch.no_grad():
        jepa = forward(sdpa_model, pack(exs, 40, k=k, pred_ids=PRED_IDS, pad_id=PAD),
                       kernels=kernels)
        plain = forward(sdpa_model, pack([Example(e.kind, e.views, jepa=False) for e in exs], 40,
                                         k=k, pred_ids=PRED_IDS, pad_id=PAD), kernels=kernels)
        total, count = hand_lm(sdpa_model, exs)  # full logits of each LM sequence run alone
    assert jepa.num_label_tokens == plain.num_label_tokens == count
    torch.testing.assert_close(jepa.lm_loss, plain.lm_loss, atol=1e-5, rtol=1e-5)
    assert abs(jepa.lm_loss.item() - total / count) < 1e-4


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("k", [0, 2])
def test_lm_on_all_labels_the_text_and_matches_full_sequence_ce(sdpa_model, k, kernels):
    """data.lm_on_all: in the pair layout every text+code token after the first is a target,
    and the LM loss is the cross-entropy of text+code run alone over all its tokens."""
    exs = random_examples(12, seed=3)
    pairs = [e for e in exs if e.kind == "pair"]
    assert len(pairs) >= 4
    b_on = pack(exs, 64, k=k, pred_ids=PRED_IDS, pad_id=PAD, lm_on_all=True)
    b_off = pack(exs, 64, k=k, pred_ids=PRED_IDS, pad_id=PAD)
    extra = sum(len(e.views[0]) - 1 for e in pairs)  # the text's own next tokens
    assert b_on.num_label_tokens == b_off.num_label_tokens + extra
    # Labels of each pair document, read from the batch: the shifted text+code tokens.
    seen = 0
    for r in range(b_on.input_ids.shape[0]):
        docs, roles = b_on.doc_ids[r], b_on.roles[r]
        for d in torch.unique(docs[roles == ANSWER]).tolist():
            main = (docs == d) & (roles != PRED)
            toks, labs = b_on.input_ids[r, main].tolist(), b_on.labels[r, main].tolist()
            assert labs == toks[1:] + [IGNORE_INDEX]
            assert (b_on.labels[r, (docs == d) & (roles == PRED)] == IGNORE_INDEX).all()
            seen += 1
    assert seen == len(pairs)
    with torch.no_grad():
        on = forward(sdpa_model, b_on, kernels=kernels)
        off = forward(sdpa_model, b_off, kernels=kernels)
        three = forward(sdpa_model, b_on, mode="three_pass", kernels=kernels)
        total, count = hand_lm(sdpa_model, exs, lm_on_all=True)
    assert on.num_label_tokens == count
    assert abs(on.lm_loss.item() - total / count) < 1e-5
    torch.testing.assert_close(on.lm_loss, three.lm_loss, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(on.jepa_loss, off.jepa_loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_invariant3_single_pass_equals_three_pass_and_hand(sdpa_model, distance, k, kernels):
    exs = random_examples(9, seed=2)
    b = pack(exs, 48, k=k, pred_ids=PRED_IDS, pad_id=PAD)
    kw = dict(distance=distance, lbd=2.0, gamma=0.5, kernels=kernels)
    with torch.no_grad():
        one = forward(sdpa_model, b, **kw)
        three = forward(sdpa_model, b, mode="three_pass", **kw)
        want, want_cos = hand_jepa(sdpa_model, exs, k, distance)
    for name in ("loss", "lm_loss", "jepa_loss", "cosine"):
        torch.testing.assert_close(getattr(one, name), getattr(three, name), atol=2e-5, rtol=2e-5)
    assert abs(one.jepa_loss.item() - want) < 1e-4
    assert abs(one.cosine.item() - want_cos) < 1e-4
    assert abs(one.loss.item() - (0.5 * one.lm_loss.item() + 2.0 * want)) < 1e-4


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("reverse,jepa_pairs", [(True, "next"), (False, "all"), (True, "all")])
def test_reverse_and_all_pairs_match_hand(sdpa_model, reverse, jepa_pairs, kernels):
    exs = random_examples(8, seed=4)
    b = pack(exs, 64, k=2, pred_ids=PRED_IDS, pad_id=PAD, reverse=reverse, jepa_pairs=jepa_pairs)
    with torch.no_grad():
        one = forward(sdpa_model, b, kernels=kernels)
        three = forward(sdpa_model, b, mode="three_pass", kernels=kernels)
        want, _ = hand_jepa(sdpa_model, exs, 2, "cosine", reverse=reverse, jepa_pairs=jepa_pairs)
    torch.testing.assert_close(one.jepa_loss, three.jepa_loss, atol=2e-5, rtol=2e-5)
    assert abs(one.jepa_loss.item() - want) < 1e-4


def test_kernel_settings_take_different_cosine_paths(sdpa_model, monkeypatch):
    """The KERNELS parametrization is meaningful: "reference" never calls the fused kernel,
    "auto" does wherever Triton runs (on CPU: TRITON_INTERPRET=1, set by conftest)."""
    from megajepa.ops import cosine

    calls = []
    for name in ("fused_cosine_loss", "cosine_loss_reference"):
        real = getattr(cosine, name)
        monkeypatch.setattr(cosine, name, lambda *a, _n=name, _f=real, **kw: (calls.append(_n),
                                                                              _f(*a, **kw))[1])
    b = batch_for(1)
    with torch.no_grad():
        forward(sdpa_model, b, kernels="reference")
        assert calls == ["cosine_loss_reference"]
        calls.clear()
        forward(sdpa_model, b, kernels="auto")
    want = "fused_cosine_loss" if cosine._use_triton(b.input_ids.float()) else "cosine_loss_reference"
    assert calls == [want]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("distance", ["cosine", "l2", "mse"])
def test_global_normalization_1x4_equals_4x1(distance, kernels):
    """The same global batch as one micro-batch of 4 examples or 4 micro-batches of 1 gives
    the same gradient when losses are normalized by global counts."""
    model = tiny_model()
    exs = random_examples(4, seed=5)
    full = pack(exs, 64, k=2, pred_ids=PRED_IDS, pad_id=PAD)
    parts = [pack([e], 64, k=2, pred_ids=PRED_IDS, pad_id=PAD) for e in exs]
    den = dict(lm_denominator=full.num_label_tokens, jepa_denominator=full.num_pairs)
    assert sum(p.num_pairs for p in parts) == full.num_pairs

    model.zero_grad()
    forward(model, full, distance=distance, kernels=kernels, **den).loss.backward()
    one = _grads(model)
    model.zero_grad()
    for p in parts:
        forward(model, p, distance=distance, kernels=kernels, **den).loss.backward()
    four = _grads(model)
    assert one.keys() == four.keys() and len(one) > 0
    for n in one:
        torch.testing.assert_close(four[n], one[n], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("distance", DISTANCES)
def test_stopgrad_target_blocks_the_target_branch(distance, kernels):
    """With stopgrad, the JEPA gradient equals the one of a loss whose target forward ran
    under no_grad (three-pass by hand); without it, the two differ. Every distance."""
    model = tiny_model()
    exs = [Example("pair", [[5, 6, 7, 8], [9, 10, 11]]), Example("pair", [[12, 13], [14, 15, 16]]),
           Example("pair", [[17, 18, 19], [20, 21]])]
    b = pack(exs, 48, k=1, pred_ids=PRED_IDS, pad_id=PAD)

    def jepa_grads(stop):
        model.zero_grad()
        forward(model, b, gamma=0.0, stopgrad_target=stop, distance=distance,
                kernels=kernels).loss.backward()
        return _grads(model)

    model.zero_grad()
    preds = torch.stack([run_alone(model, list(e.views[0]) + PRED_IDS[:1])[-1] for e in exs])
    with torch.no_grad():
        tgts = torch.stack([run_alone(model, list(e.views[1]))[-1] for e in exs])
    distance64(preds, tgts, distance).mean().backward()
    hand = _grads(model)
    stop, both = jepa_grads(True), jepa_grads(False)
    assert hand.keys() <= stop.keys() and len(hand) > 0
    atol = 2e-5 if distance == "infonce" else 1e-6  # 1/tau = 14 amplifies fp32 rounding
    for n in stop:  # the LM head gets only the zero gradient of gamma = 0
        want = hand[n].float() if n in hand else torch.zeros_like(stop[n])
        torch.testing.assert_close(stop[n], want, atol=atol, rtol=1e-4)
    assert any(not torch.allclose(both[n], hand[n].float(), atol=10 * atol) for n in hand)


def test_padding_rows_never_nan(sdpa_model):
    b = pack(random_examples(3), 32, k=1, pred_ids=PRED_IDS, pad_id=PAD, min_rows=4)
    assert (b.doc_ids[-1] == PAD_DOC).all()
    out = forward(sdpa_model, b, return_hidden=True)
    assert torch.isfinite(out.hidden).all() and torch.isfinite(out.loss)


def test_no_pairs_and_no_labels_are_finite(sdpa_model):
    lm_only = pack([Example("lm", [[1, 2, 3]])], 8, k=1, pred_ids=PRED_IDS, pad_id=PAD)
    out = forward(sdpa_model, lm_only)
    assert out.num_pairs == 0 and out.jepa_loss.item() == 0.0 and torch.isfinite(out.loss)
