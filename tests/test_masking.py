"""The attention rule and its two backends (dense SDPA mask, FlexAttention BlockMask)."""
import itertools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from megajepa.layout import ANSWER, PAD_DOC, PRED, TEXT, pack
from megajepa.masking import (ALLOW, additive_mask, allowed, block_mask, block_structure,
                              dense_mask)

from conftest import PRED_IDS, random_examples


def test_formula_matches_the_table():
    for rq, rk in itertools.product((TEXT, ANSWER, PRED), repeat=2):
        got = allowed(torch.tensor(5), torch.tensor(3), torch.tensor(0), torch.tensor(0),
                      torch.tensor(rq), torch.tensor(rk))
        assert bool(got) == (rk in ALLOW[rq])


def test_rule_basics():
    t = torch.tensor
    # Other document, future token, padding: never; the diagonal: always.
    assert not allowed(t(5), t(3), t(0), t(1), t(TEXT), t(TEXT))
    assert not allowed(t(3), t(5), t(0), t(0), t(TEXT), t(TEXT))
    assert not allowed(t(5), t(3), t(PAD_DOC), t(PAD_DOC), t(TEXT), t(TEXT))
    assert allowed(t(5), t(5), t(PAD_DOC), t(PAD_DOC), t(TEXT), t(TEXT))


def test_pair_mask_is_the_drawn_matrix():
    b = pack([__import__("megajepa").Example("pair", [[1, 2, 3], [4, 5, 6]])], 13, k=2,
             pred_ids=[7, 8], pad_id=0)
    m = dense_mask(b.doc_ids, b.roles)[0, 0].int()
    drawn = """
    1............
    11...........
    111..........
    1111.........
    11111........
    111111.......
    111...1......
    111...11.....
    ........1....
    ........11...
    ........111..
    ...........1.
    ............1"""
    want = torch.tensor([[c == "1" for c in line.strip()] for line in drawn.strip().splitlines()])
    assert torch.equal(m.bool(), want)


def test_no_row_is_empty_and_padding_sees_only_itself():
    b = pack(random_examples(10), 48, k=2, pred_ids=PRED_IDS, pad_id=0, min_rows=5)
    m = dense_mask(b.doc_ids, b.roles)[:, 0]
    assert m.any(-1).all()
    pad = b.doc_ids == PAD_DOC
    eye = torch.eye(48, dtype=torch.bool).expand_as(m)
    assert torch.equal(m[pad], eye[pad])
    add = additive_mask(b.doc_ids, b.roles, torch.float32)[:, 0]
    assert torch.equal(add == 0, m)


def test_flex_block_mask_agrees_with_dense_sdpa():
    torch.manual_seed(0)
    b = pack(random_examples(14, seed=3), 64, k=3, pred_ids=PRED_IDS, pad_id=0, min_rows=3)
    rows, s = b.doc_ids.shape
    q, k, v = (torch.randn(rows, 2, s, 16) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(b.doc_ids, b.roles))
    bm = block_mask(b.doc_ids, b.roles, block_size=16)
    with torch.no_grad():
        flex = flex_attention(q, k, v, block_mask=bm)
    assert torch.isfinite(flex).all()
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    # The tiles built from document ranges: every tile with an allowed pair is there, tiles
    # that share no document or lie above the diagonal are skipped, and a tile marked full
    # (no mask_mod) really allows every pair.
    allowed_pairs = dense_mask(b.doc_ids, b.roles)[:, 0]
    nb = s // 16
    tiles = allowed_pairs.reshape(rows, nb, 16, nb, 16)
    assert torch.equal(bm.to_dense()[:, 0].bool(), tiles.any(-1).any(2))
    long = pack(random_examples(10, seed=6, max_len=60), 256, k=2, pred_ids=PRED_IDS, pad_id=0)
    ok = dense_mask(long.doc_ids, long.roles)[:, 0].reshape(-1, 16, 16, 16, 16)
    partial, full = block_structure(long.doc_ids, long.roles, 16)
    assert full.any() and ok.all(-1).all(2)[full].all()
    assert not (partial & full).any()
    assert (ok.any(-1).any(2) <= (partial | full)).all()


def test_block_structure_handles_a_ragged_last_block():
    b = pack(random_examples(12, seed=5), 72, k=2, pred_ids=PRED_IDS, pad_id=0, min_rows=2)
    rows, s = b.doc_ids.shape
    q, k, v = (torch.randn(rows, 2, s, 8) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(b.doc_ids, b.roles))
    with torch.no_grad():
        flex = flex_attention(q, k, v, block_mask=block_mask(b.doc_ids, b.roles, block_size=16))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def test_sliding_window_is_measured_in_positions_and_the_tiles_cover_it():
    """With a window, a pair is allowed when the rule allows it and its position difference
    (not its row distance) is below the window; the tiles built from block summaries hold
    every allowed pair, skip tiles the window empties, and a full tile allows every pair."""
    b = pack(random_examples(10, seed=6, max_len=60), 256, k=2, pred_ids=PRED_IDS, pad_id=0)
    rows, s = b.doc_ids.shape
    pos = b.position_ids
    plain = dense_mask(b.doc_ids, b.roles)[:, 0]
    eye = torch.eye(s, dtype=torch.bool)
    for w in (5, 40):
        m = dense_mask(b.doc_ids, b.roles, pos, w)[:, 0]
        assert torch.equal(m, plain & ((pos[:, :, None] - pos[:, None, :] < w) | eye))
        assert (m != plain).any() and (m.sum(-1) <= w).all()
        add = additive_mask(b.doc_ids, b.roles, torch.float32, pos, w)[:, 0]
        assert torch.equal(add == 0, m)
        ok = m.reshape(rows, s // 16, 16, s // 16, 16)
        partial, full = block_structure(b.doc_ids, b.roles, 16, pos, w)
        assert not (partial & full).any()
        assert (ok.any(-1).any(2) <= (partial | full)).all()
        assert ok.all(-1).all(2)[full].all()
        p0, f0 = block_structure(b.doc_ids, b.roles, 16)
        assert (partial | full).sum() < (p0 | f0).sum()  # the window skips tiles
        if w == 40:
            assert full.any()
        q, k, v = (torch.randn(rows, 2, s, 8) for _ in range(3))
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=m[:, None])
        with torch.no_grad():
            flex = flex_attention(q, k, v, block_mask=block_mask(b.doc_ids, b.roles, pos, w,
                                                                 block_size=16))
        torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
