"""DESIGN §2 invariants and the objective's arithmetic, against unpacked oracles.

1. every packed hidden state equals the hidden state of its logical sequence run alone;
2. the next-token loss of a JEPA batch equals that of the same examples without JEPA
   (and plain full-logits cross-entropy over each example run alone);
3. the single-pass JEPA loss equals the three-pass loss and a hand-built one.
"""
import pytest
import torch
import torch.nn.functional as F

from megajepa import Example, forward, pack
from megajepa.layout import IGNORE_INDEX, PAD_DOC, PRED, TEXT
from megajepa.objective import DISTANCES

from conftest import PAD, PRED_IDS, VOCAB, random_examples, tiny_model


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


@pytest.mark.parametrize("k", [0, 1, 3])
def test_invariant2_lm_loss_unchanged_by_jepa(sdpa_model, k):
    exs = random_examples(10, seed=1)
    with torch.no_grad():
        jepa = forward(sdpa_model, pack(exs, 40, k=k, pred_ids=PRED_IDS, pad_id=PAD))
        plain = forward(sdpa_model, pack([Example(e.kind, e.views, jepa=False) for e in exs], 40,
                                         k=k, pred_ids=PRED_IDS, pad_id=PAD))
        # Oracle: full logits of each example's LM sequence run alone.
        total, count = 0.0, 0
        for e in exs:
            if e.kind == "pair":
                seq, start = list(e.views[0]) + list(e.views[1]), len(e.views[0])
                segs = [(seq, start)]
            else:
                segs = [(list(v), 1) for v in e.views]
            for seq, start in segs:
                logits = sdpa_model(input_ids=torch.tensor([seq])).logits[0].float()
                tgt = torch.tensor(seq[start:])
                total += F.cross_entropy(logits[start - 1:-1], tgt, reduction="sum").item()
                count += len(tgt)
    assert jepa.num_label_tokens == plain.num_label_tokens == count
    torch.testing.assert_close(jepa.lm_loss, plain.lm_loss, atol=1e-5, rtol=1e-5)
    assert abs(jepa.lm_loss.item() - total / count) < 1e-4


def hand_jepa(model, exs, k, distance, reverse=False, jepa_pairs="next", tau=0.07):
    """The paper's formulation by hand: Pred = (source view + k predictors) run alone,
    Enc = target view run alone; float64 distances."""
    preds, tgts = [], []
    for e in exs:
        if not e.jepa or e.kind == "lm":
            continue
        v = [list(x) for x in e.views]
        if e.kind == "pair":
            pairs = [(1, 0)] if reverse else [(0, 1)]
        else:
            n = len(v)
            pairs = [(i, i + 1) for i in range(n - 1)] if jepa_pairs == "next" else \
                [(i, j) for i in range(n) for j in range(n) if i != j]
            pairs = [(j, i) for i, j in pairs] if reverse else pairs
        for i, j in pairs:
            preds.append(run_alone(model, v[i] + PRED_IDS[:k])[-1])
            tgts.append(run_alone(model, v[j])[-1])
    p, t = torch.stack(preds).double(), torch.stack(tgts).double()
    cos = F.cosine_similarity(p, t, dim=-1)
    d = {"cosine": 1 - cos, "l2": (p - t).norm(dim=-1), "mse": (p - t).pow(2).mean(-1),
         "infonce": F.cross_entropy(F.normalize(p, dim=-1) @ F.normalize(t, dim=-1).T / tau,
                                    torch.arange(len(p)), reduction="none")}[distance]
    return d.mean().item(), cos.mean().item()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_invariant3_single_pass_equals_three_pass_and_hand(sdpa_model, distance, k):
    exs = random_examples(9, seed=2)
    b = pack(exs, 48, k=k, pred_ids=PRED_IDS, pad_id=PAD)
    with torch.no_grad():
        one = forward(sdpa_model, b, distance=distance, lbd=2.0, gamma=0.5)
        three = forward(sdpa_model, b, distance=distance, lbd=2.0, gamma=0.5, mode="three_pass")
        want, want_cos = hand_jepa(sdpa_model, exs, k, distance)
    for name in ("loss", "lm_loss", "jepa_loss", "cosine"):
        torch.testing.assert_close(getattr(one, name), getattr(three, name), atol=2e-5, rtol=2e-5)
    assert abs(one.jepa_loss.item() - want) < 1e-4
    assert abs(one.cosine.item() - want_cos) < 1e-4
    assert abs(one.loss.item() - (0.5 * one.lm_loss.item() + 2.0 * want)) < 1e-4


@pytest.mark.parametrize("reverse,jepa_pairs", [(True, "next"), (False, "all"), (True, "all")])
def test_reverse_and_all_pairs_match_hand(sdpa_model, reverse, jepa_pairs):
    exs = random_examples(8, seed=4)
    b = pack(exs, 64, k=2, pred_ids=PRED_IDS, pad_id=PAD, reverse=reverse, jepa_pairs=jepa_pairs)
    with torch.no_grad():
        one = forward(sdpa_model, b)
        three = forward(sdpa_model, b, mode="three_pass")
        want, _ = hand_jepa(sdpa_model, exs, 2, "cosine", reverse=reverse, jepa_pairs=jepa_pairs)
    torch.testing.assert_close(one.jepa_loss, three.jepa_loss, atol=2e-5, rtol=2e-5)
    assert abs(one.jepa_loss.item() - want) < 1e-4


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("distance", ["cosine", "l2", "mse"])
def test_global_normalization_1x4_equals_4x1(distance):
    """The same global batch as one micro-batch of 4 examples or 4 micro-batches of 1 gives
    the same gradient when losses are normalized by global counts."""
    model = tiny_model()
    exs = random_examples(4, seed=5)
    full = pack(exs, 64, k=2, pred_ids=PRED_IDS, pad_id=PAD)
    parts = [pack([e], 64, k=2, pred_ids=PRED_IDS, pad_id=PAD) for e in exs]
    den = dict(lm_denominator=full.num_label_tokens, jepa_denominator=full.num_pairs)
    assert sum(p.num_pairs for p in parts) == full.num_pairs

    model.zero_grad()
    forward(model, full, distance=distance, **den).loss.backward()
    one = _grads(model)
    model.zero_grad()
    for p in parts:
        forward(model, p, distance=distance, **den).loss.backward()
    four = _grads(model)
    assert one.keys() == four.keys() and len(one) > 0
    for n in one:
        torch.testing.assert_close(four[n], one[n], atol=1e-6, rtol=1e-5)


def test_stopgrad_target_blocks_the_target_branch():
    """With stopgrad, the JEPA gradient equals the one of a loss whose target forward ran
    under no_grad (three-pass by hand); without it, the two differ."""
    model = tiny_model()
    exs = [Example("pair", [[5, 6, 7, 8], [9, 10, 11]]), Example("pair", [[12, 13], [14, 15, 16]])]
    b = pack(exs, 32, k=1, pred_ids=PRED_IDS, pad_id=PAD)

    def jepa_grads(stop):
        model.zero_grad()
        forward(model, b, gamma=0.0, stopgrad_target=stop).loss.backward()
        return _grads(model)

    model.zero_grad()
    preds = torch.stack([run_alone(model, list(e.views[0]) + PRED_IDS[:1])[-1] for e in exs])
    with torch.no_grad():
        tgts = torch.stack([run_alone(model, list(e.views[1]))[-1] for e in exs])
    (1 - F.cosine_similarity(preds, tgts, dim=-1)).mean().backward()
    hand = _grads(model)
    stop, both = jepa_grads(True), jepa_grads(False)
    for n in hand:
        torch.testing.assert_close(stop[n], hand[n], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(both[n], hand[n], atol=1e-6) for n in hand)


def test_padding_rows_never_nan(sdpa_model):
    b = pack(random_examples(3), 32, k=1, pred_ids=PRED_IDS, pad_id=PAD, min_rows=4)
    assert (b.doc_ids[-1] == PAD_DOC).all()
    out = forward(sdpa_model, b, return_hidden=True)
    assert torch.isfinite(out.hidden).all() and torch.isfinite(out.loss)


def test_no_pairs_and_no_labels_are_finite(sdpa_model):
    lm_only = pack([Example("lm", [[1, 2, 3]])], 8, k=1, pred_ids=PRED_IDS, pad_id=PAD)
    out = forward(sdpa_model, lm_only)
    assert out.num_pairs == 0 and out.jepa_loss.item() == 0.0 and torch.isfinite(out.loss)
