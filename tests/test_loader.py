"""megajepa.loader: deterministic packed epochs, rank sharding, exact mid-epoch resume."""
import random

import numpy as np
import pytest
import torch

from data_tools.store import StoreWriter, open_store
from megajepa.layout import ANSWER, PRED, TEXT, example_cost
from megajepa.loader import PackedLoader, vector_costs

PRED_IDS = [90, 91, 92]
TENSORS = ("input_ids", "position_ids", "doc_ids", "roles", "labels", "pred_index", "target_index")


def make_store(path, kind, n, seed=0, max_len=12):
    """A store of random token ids (1..80), each view ending in 3 (eos)."""
    rng = random.Random(seed)
    with StoreWriter(str(path), kind=kind, vocab_size=100) as w:
        for _ in range(n):
            nv = {"pair": 2, "lm": 1, "group": rng.randint(2, 4)}[kind]
            w.add([[rng.randint(5, 80) for _ in range(rng.randint(1, max_len))] + [3] for _ in range(nv)])
        w.commit(dict(pred_ids=PRED_IDS, special_ids=dict(pad=0, bos=2, eos=3, sep=4, unk=1)))
    return open_store(str(path))


def loader(store, **kw):
    args = dict(seq_len=64, micro_batch_rows=2, k=2, pred_ids=PRED_IDS, pad_id=0, seed=5)
    return PackedLoader(store, **{**args, **kw})


def same(a, b):
    return all(torch.equal(getattr(a, t), getattr(b, t)) for t in TENSORS)


@pytest.mark.parametrize("kind", ["pair", "group", "lm"])
@pytest.mark.parametrize("jepa_pairs,reverse,k", [("next", False, 0), ("all", True, 3), ("next", True, 2)])
def test_vector_costs_equal_example_cost(tmp_path, kind, jepa_pairs, reverse, k):
    st = make_store(tmp_path / "s", kind, 60)
    jepa = np.random.default_rng(0).random(len(st)) < 0.5
    got = vector_costs(kind, st.view_lengths, st.example_offsets, jepa, k=k, jepa_pairs=jepa_pairs, reverse=reverse)
    want = [example_cost(st.example(i, jepa=bool(jepa[i])), k=k, jepa_pairs=jepa_pairs, reverse=reverse)
            for i in range(len(st))]
    assert got.tolist() == want


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, world_size):
    st = make_store(tmp_path / "s", "group", 150)
    for rank in range(world_size):
        ref = loader(st, rank=rank, world_size=world_size)
        n = ref.steps_per_epoch + 3  # cross into epoch 1
        want = [next(ref) for _ in range(n)]
        assert ref.epoch == 1
        cut = 4
        first = loader(st, rank=rank, world_size=world_size)
        got = [next(first) for _ in range(cut)]
        state = first.state_dict()
        resumed = loader(st, rank=rank, world_size=world_size)
        resumed.load_state_dict(state)
        got += [next(resumed) for _ in range(n - cut)]
        assert all(same(a, b) for a, b in zip(want, got))
        assert all(b.shape == (2, 64) for b in got)


def test_two_ranks_see_every_row_once(tmp_path):
    st = make_store(tmp_path / "s", "pair", 200)
    ranks = [loader(st, rank=r, world_size=2, micro_batch_rows=3) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch > 0
    stats = ranks[0].epoch_stats
    seen = []
    for r, ld in enumerate(ranks):
        for step in range(ld.steps_per_epoch):
            rows = ld.rows_of(0, step)
            batch = next(ld)
            assert batch.stats["examples"] == sum(len(x) for x in rows)  # the batch packs exactly these rows
            seen += [tuple(x) for x in rows]
    assert len(seen) == len(set(seen)) == stats["rows"] - stats["tail_rows"]
    assert stats["tail_rows"] < 3 * 2
    examples = [i for row in seen for i in row]
    assert len(examples) == len(set(examples))
    assert len(examples) + stats["tail_examples"] + stats["dropped_too_long"] == len(st)
    assert 0.5 < stats["efficiency"] <= 1.0


def test_epochs_are_deterministic_and_reshuffled(tmp_path):
    st = make_store(tmp_path / "s", "group", 120)
    a, b = loader(st), loader(st)
    assert a.rows_of(0, 0) == b.rows_of(0, 0) and a.rows_of(1, 0) == b.rows_of(1, 0)
    assert a.plan(0).rows != a.plan(1).rows
    assert loader(st, seed=6).plan(0).rows != a.plan(0).rows


def test_jepa_ratio_and_overflow(tmp_path):
    st = make_store(tmp_path / "s", "pair", 300, max_len=30)
    none = loader(st, jepa_ratio=0.0, seq_len=128)
    assert all(next(none).num_pairs == 0 for _ in range(3))
    half = loader(st, jepa_ratio=0.5, seq_len=128)
    assert 0.35 < half.plan(0).jepa.mean() < 0.65
    drop = loader(st, seq_len=40, overflow="drop").epoch_stats
    trunc = loader(st, seq_len=40, overflow="truncate").epoch_stats
    assert drop["dropped_too_long"] > 0 and trunc["truncated"] == drop["dropped_too_long"]
    assert trunc["dropped_too_long"] == 0
    batch = next(loader(st, seq_len=40, overflow="truncate"))
    assert batch.shape == (2, 40)


def test_state_from_another_world_size_is_refused(tmp_path):
    st = make_store(tmp_path / "s", "lm", 50)
    with pytest.raises(ValueError, match="world_size"):
        loader(st, world_size=2).load_state_dict(loader(st).state_dict())


def test_round_trip_text_store_rows_text(tmp_path):
    """chat JSONL -> store -> packed rows -> decoded text equals the input pairs."""
    import json

    from data_tools import nlrx
    from data_tools.preprocess import preprocess
    from data_tools.tokenizer import train_sentencepiece

    pairs = nlrx.generate_pairs(120, seed=7)
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(nlrx.chat_record(p["description"], p["regex"])) + "\n" for p in pairs))
    tok = train_sentencepiece([p[f] for p in pairs for f in ("description", "regex")], str(tmp_path / "tok"),
                              vocab_size=300, k=2)
    preprocess([str(src)], str(tmp_path / "st"), tokenizer=str(tmp_path / "tok"), progress=False)
    st = open_store(str(tmp_path / "st"))
    ld = PackedLoader(st, seq_len=256, micro_batch_rows=1, k=2, pred_ids=st.pred_ids, pad_id=st.special_ids["pad"],
                      seed=0)
    got = []
    for _ in range(ld.steps_per_epoch):
        b = next(ld)
        ids, docs, roles = b.input_ids[0], b.doc_ids[0], b.roles[0]
        for d in docs.unique().tolist():
            on = docs == d
            if d < 0 or not (roles[on] == ANSWER).any():
                continue  # padding, or the code-alone target document
            assert (roles[on] == PRED).sum() == 2
            text = tok.decode(ids[on & (roles == TEXT)].tolist(), skip_special_tokens=True)
            code = tok.decode(ids[on & (roles == ANSWER)].tolist(), skip_special_tokens=True)
            got.append((text, code))
    assert ld.epoch_stats["tail_rows"] == 0
    assert sorted(got) == sorted((p["description"], p["regex"]) for p in pairs)


def test_jepa_dropout_is_redrawn_every_epoch_and_deterministic(tmp_path):
    """jepa_ratio: each epoch draws new coin flips (seeded by (seed, epoch)), a fresh loader
    draws the same ones, and the packed batches carry exactly the drawn JEPA pairs."""
    st = make_store(tmp_path / "s", "pair", 200)
    a = loader(st, jepa_ratio=0.5)
    flips = [a.plan(e).jepa.copy() for e in range(3)]
    assert all(0.3 < f.mean() < 0.7 for f in flips)
    # Different examples carry JEPA in each epoch (equal draws would be a 2^-200 accident).
    assert not np.array_equal(flips[0], flips[1]) and not np.array_equal(flips[1], flips[2])
    b = loader(st, jepa_ratio=0.5)
    assert all(np.array_equal(b.plan(e).jepa, flips[e]) for e in (2, 0, 1))
    assert not np.array_equal(loader(st, jepa_ratio=0.5, seed=6).plan(0).jepa, flips[0])
    # What the batches carry: one pair per JEPA example of its rows, epoch by epoch.
    for _ in range(a.steps_per_epoch + 2):  # into epoch 1
        batch = next(a)
        e, s = batch.stats["epoch"], batch.stats["step_in_epoch"]
        assert batch.num_pairs == sum(int(flips[e][i]) for r in a.rows_of(e, s) for i in r)
    assert a.epoch == 1


def test_lm_on_all_reaches_the_packed_labels(tmp_path):
    """data.lm_on_all travels through the loader: a pair's text is labelled too."""
    st = make_store(tmp_path / "s", "pair", 40)
    on, off = loader(st, lm_on_all=True), loader(st)
    rows = on.rows_of(0, 0)
    b_on, b_off = next(on), next(off)
    texts = [st.example(i).views[0] for r in rows for i in r]
    assert b_on.num_label_tokens == b_off.num_label_tokens + sum(len(t) - 1 for t in texts)


def test_a_sliding_window_model_logs_the_layer_mean_of_attended_pairs(tmp_path):
    """The FLOP count's attended pairs: the rule's for full attention (windows None or all
    None), the mean over the layers' windows for a sliding-window model."""
    from megajepa.metrics import attended_pairs, layer_mean_pairs

    st = make_store(tmp_path / "s", "pair", 40, max_len=30)
    plain, full = loader(st, seq_len=128), loader(st, seq_len=128, attention_windows=[None, None])
    windowed = loader(st, seq_len=128, attention_windows=[None, 4])
    for _ in range(3):
        a, b, c = next(plain), next(full), next(windowed)
        assert a.stats["attended_pairs"] == b.stats["attended_pairs"] == attended_pairs(a.doc_ids, a.roles)
        assert c.stats["attended_pairs"] == layer_mean_pairs(c.doc_ids, c.roles, c.position_ids, [None, 4])
        assert c.stats["attended_pairs"] < a.stats["attended_pairs"]
