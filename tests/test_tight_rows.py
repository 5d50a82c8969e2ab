"""Tight rows (``data.balance_rows``): examples spread evenly over a micro-batch's rows and the
rows cut to the longest one give the losses and gradients of the rows padded to ``seq_len``
(the old layout), the packed forward still equals the unpacked one, the loader's epoch plan,
steps and resume are unchanged; ``optim.fused`` picks the AdamW kernel."""
import random

import numpy as np
import pytest
import torch

from data_tools.store import StoreWriter, open_store
from megajepa import config, forward
from megajepa.layout import PAD_DOC, PRED, balance_rows, example_cost, pack, plan_rows
from megajepa.loader import PackedLoader

from conftest import PAD, PRED_IDS, VOCAB, random_examples, tiny_model

TENSORS = ("input_ids", "position_ids", "doc_ids", "roles", "labels", "pred_index", "target_index")


def make_store(path, kind, n, seed=0, max_len=14):
    rng = random.Random(seed)
    with StoreWriter(str(path), kind=kind, vocab_size=VOCAB) as w:
        for _ in range(n):
            nv = {"pair": 2, "group": rng.randint(2, 3)}[kind]
            w.add([[rng.randint(5, 99) for _ in range(rng.randint(1, max_len))] + [3] for _ in range(nv)])
        w.commit(dict(pred_ids=PRED_IDS, special_ids=dict(pad=PAD, bos=2, eos=3, sep=4, unk=1)))
    return open_store(str(path))


def loader(store, **kw):
    args = dict(seq_len=96, micro_batch_rows=1, micro_batch_examples=8, k=2, pred_ids=PRED_IDS, pad_id=PAD,
                seed=3)
    return PackedLoader(store, **{**args, **kw})


def test_balance_rows_spreads_evenly_and_partitions():
    costs = [50, 50, 40, 40, 30, 30]
    assert [sum(costs[i] for i in r) for r in plan_rows(costs, 160)] == [140, 100]
    rows = balance_rows(costs, 2, 160)
    assert rows == [[0, 2, 4], [1, 3, 5]]
    assert len(plan_rows([3, 3, 2, 2, 2], 6)) == 2                # best fit: 3+3 | 2+2+2
    assert balance_rows([3, 3, 2, 2, 2], 2, 6) is None          # spread: 3+2+2 overflows
    assert balance_rows([200], 1, 160) is None                   # not placeable
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = rng.integers(1, 60, rng.integers(1, 12)).tolist()
        n = len(plan_rows(c, 64))
        got = balance_rows(c, n, 64)
        if got is None:
            continue
        assert sorted(i for r in got for i in r) == list(range(len(c))) and len(got) == n
        assert all(0 < sum(c[i] for i in r) <= 64 for r in got)
        assert got == balance_rows(c, n, 64)                     # deterministic


def loss_and_grads(model, batch, **kw):
    model.zero_grad()
    out = forward(model, batch, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kernels", ["reference", "auto"])
@pytest.mark.parametrize("k", [0, 2])
def test_tight_rows_same_losses_and_gradients(kernels, k):
    """The same examples packed best fit in rows of seq_len, and balanced in rows cut to the
    longest: LM and JEPA losses and every gradient agree (fp32)."""
    torch.manual_seed(0)
    model = tiny_model("sdpa")
    exs = random_examples(14, seed=4)
    kw = dict(k=k, pred_ids=PRED_IDS, pad_id=PAD)
    seq_len = 72
    old = pack(exs, seq_len, **kw)
    costs = [example_cost(e, k=k) for e in exs]
    rows = balance_rows(costs, len(plan_rows(costs, seq_len)), seq_len)
    assert rows is not None and len(rows) > 1
    width = max(sum(costs[i] for i in r) for r in rows)
    new = pack(exs, seq_len, rows=rows, width=width, **kw)
    assert new.input_ids.shape == (old.input_ids.shape[0], width) and width < seq_len
    assert new.stats["real_tokens"] == old.stats["real_tokens"]
    for lbd in (0.0, 1.0):
        o, go = loss_and_grads(model, old, lbd=lbd, kernels=kernels)
        n, gn = loss_and_grads(model, new, lbd=lbd, kernels=kernels)
        torch.testing.assert_close(n.loss, o.loss, atol=1e-6, rtol=0)
        torch.testing.assert_close(n.lm_loss, o.lm_loss, atol=1e-6, rtol=0)
        if lbd:
            torch.testing.assert_close(n.jepa_loss, o.jepa_loss, atol=1e-6, rtol=0)
        assert go.keys() == gn.keys()
        for name in go:
            torch.testing.assert_close(gn[name], go[name], atol=1e-6, rtol=0, msg=name)


def test_tight_batch_hidden_states_equal_the_unpacked_forward():
    """Invariant 1 on a balanced, cut batch: each document's non-predictor tokens, run alone
    without a mask, give the packed hidden states."""
    model = tiny_model("sdpa")
    exs = random_examples(12, seed=7)
    costs = [example_cost(e, k=1) for e in exs]
    rows = balance_rows(costs, len(plan_rows(costs, 64)), 64)
    b = pack(exs, 64, k=1, pred_ids=PRED_IDS, pad_id=PAD, rows=rows,
             width=max(sum(costs[i] for i in r) for r in rows))
    checked = 0
    with torch.no_grad():
        hidden = forward(model, b, return_hidden=True).hidden
        for r in range(b.input_ids.shape[0]):
            docs, roles = b.doc_ids[r], b.roles[r]
            for d in torch.unique(docs).tolist():
                if d == PAD_DOC:
                    continue
                pos = ((docs == d) & (roles != PRED)).nonzero().squeeze(-1)
                alone = model.base_model(input_ids=b.input_ids[r, pos][None], use_cache=False).last_hidden_state[0]
                torch.testing.assert_close(hidden[r, pos], alone, atol=1e-5, rtol=1e-5)
                checked += 1
    assert checked >= len(exs)


@pytest.mark.parametrize("kind", ["pair", "group"])
def test_loader_tight_rows_same_examples_steps_and_losses(tmp_path, kind):
    st = make_store(tmp_path / "s", kind, 90)
    old, new = loader(st), loader(st, balance_rows=True)
    assert new.steps_per_epoch == old.steps_per_epoch
    assert new.plan(0).examples.tolist() == old.plan(0).examples.tolist()
    assert new.plan(0).tokens.tolist() == old.plan(0).tokens.tolist()
    assert new.epoch_stats["efficiency"] > old.epoch_stats["efficiency"]
    model = tiny_model("sdpa")
    cut = 0
    for step in range(old.steps_per_epoch):
        assert sorted(sum(new.rows_of(0, step), [])) == sorted(sum(old.rows_of(0, step), []))
        a, b = next(old), next(new)
        assert a.input_ids.shape[1] == 96 and b.input_ids.shape[1] <= 96
        assert b.input_ids.shape[0] == a.input_ids.shape[0]
        cut += b.input_ids.shape[1] < 96
        if step < 3:
            la, ga = loss_and_grads(model, a, lbd=1.0, kernels="reference")
            lb, gb = loss_and_grads(model, b, lbd=1.0, kernels="reference")
            torch.testing.assert_close(lb.loss, la.loss, atol=1e-6, rtol=0)
            for name in ga:
                torch.testing.assert_close(gb[name], ga[name], atol=1e-6, rtol=0, msg=name)
    assert cut > 0
    assert new.seen == old.seen


def test_loader_tight_rows_resume_and_fixed_rows(tmp_path):
    st = make_store(tmp_path / "s", "pair", 120)
    ref = loader(st, balance_rows=True)
    want = [next(ref) for _ in range(ref.steps_per_epoch + 2)]
    first = loader(st, balance_rows=True)
    for _ in range(4):
        next(first)
    resumed = loader(st, balance_rows=True)
    resumed.load_state_dict(first.state_dict())
    for w in want[4:]:
        g = next(resumed)
        assert all(torch.equal(getattr(g, t), getattr(w, t)) for t in TENSORS)
    fixed = loader(st, balance_rows=True, fixed_rows=True)  # a compiled model: one shape
    shapes = {next(fixed).input_ids.shape for _ in range(fixed.steps_per_epoch)}
    assert shapes == {(fixed.plan(0).max_rows, 96)}


def test_micro_batch_rows_path_cut_to_the_longest_row(tmp_path):
    st = make_store(tmp_path / "s", "pair", 90)
    old = loader(st, micro_batch_examples=0, micro_batch_rows=2, seq_len=100)
    new = loader(st, micro_batch_examples=0, micro_batch_rows=2, seq_len=100, balance_rows=True)
    assert new.plan(0).batches == old.plan(0).batches
    for _ in range(old.steps_per_epoch):
        a, b = next(old), next(new)
        w = b.input_ids.shape[1]
        assert torch.equal(a.input_ids[:, :w], b.input_ids) and (a.doc_ids[:, w:] == PAD_DOC).all()
        assert torch.equal(a.labels[:, :w], b.labels)


@pytest.mark.parametrize("device", ["cpu"])
def test_optim_fused_switch(device):
    from megajepa.train import make_optimizer
    p = [torch.nn.Parameter(torch.zeros(3))]
    groups = lambda: [{"params": p, "weight_decay": 0.0}]  # noqa: E731
    for value, fused, foreach in (("auto", True, None), ("on", True, None), ("off", False, False)):
        cfg = config.load(["--optim.fused", value])
        opt = make_optimizer(cfg, groups(), {}, torch.device(device))
        assert opt.defaults["fused"] is fused and opt.defaults["foreach"] is foreach
    with pytest.raises(SystemExit):
        config.load(["--optim.fused", "maybe"])
    assert config.load(["--data.balance_rows", "false"]).data.balance_rows is False
    assert config.load([]).data.balance_rows is True
