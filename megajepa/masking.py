"""The attention rule, and the mask forms each attention backend needs.

One rule, :func:`allowed`, is the single source of truth::

    allowed(q, kv) = q == kv
                     or (doc[q] == doc[kv] != PAD  and  kv <= q  and  ALLOW[role[q]][role[kv]])

    ALLOW     kv: TEXT  ANSWER  PRED
    q TEXT        1     0       0
    q ANSWER      1     1       0
    q PRED        1     0       1

i.e. ``role[kv] == TEXT or role[kv] == role[q]``. For the pair layout of ``layout.py``
(text t0..t2, code c0..c2, predictors p1 p2 in document A; code alone in B; padding x)::

            t0 t1 t2 c0 c1 c2 p1 p2 | c0 c1 c2 | x
        t0   1                      |          |
        t1   1  1                   |          |
        t2   1  1  1                |          |
        c0   1  1  1  1             |          |
        c1   1  1  1  1  1          |          |
        c2   1  1  1  1  1  1       |          |
        p1   1  1  1           1    |          |
        p2   1  1  1           1  1 |          |
        c0                          | 1        |
        c1                          | 1  1     |
        c2                          | 1  1  1  |
        x                           |          | 1

So every position sees exactly the tokens it would see if its logical sequence (text+code,
text+predictors, code alone) ran on its own, which the tests check against unpacked forwards.

Backends: :func:`dense_mask` (boolean ``[rows, 1, S, S]`` for SDPA; an additive float mask
for eager attention) and :func:`block_mask` (FlexAttention ``BlockMask``). Both evaluate
:func:`allowed`; :func:`attention_mask_for` picks the form a model's attention needs.
"""
from __future__ import annotations

import torch

from megajepa.layout import ANSWER, PAD_DOC, PRED, TEXT

# ALLOW[role_q][role_kv]: the table above, kept as data so tests can check the formula.
ALLOW = {
    TEXT: {TEXT},
    ANSWER: {TEXT, ANSWER},
    PRED: {TEXT, PRED},
}


def allowed(q_idx, kv_idx, doc_q, doc_kv, role_q, role_kv):
    """The attention rule on broadcastable integer tensors (see the module docstring)."""
    same_doc = (doc_q == doc_kv) & (doc_q != PAD_DOC)
    role_ok = (role_kv == TEXT) | (role_kv == role_q)
    return (same_doc & (kv_idx <= q_idx) & role_ok) | (q_idx == kv_idx)


def dense_mask(doc_ids: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[rows, 1, S, S]``: True where query ``q`` may attend to ``kv``."""
    s = doc_ids.shape[-1]
    idx = torch.arange(s, device=doc_ids.device)
    m = allowed(idx[:, None], idx[None, :], doc_ids[:, :, None], doc_ids[:, None, :],
                roles[:, :, None], roles[:, None, :])
    return m[:, None]


def additive_mask(doc_ids: torch.Tensor, roles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float mask for eager attention: 0 where allowed, the dtype's minimum elsewhere."""
    m = dense_mask(doc_ids, roles)
    out = torch.zeros(m.shape, dtype=dtype, device=doc_ids.device)
    return out.masked_fill_(~m, torch.finfo(dtype).min)


def mask_mod_for(doc_ids: torch.Tensor, roles: torch.Tensor):
    """FlexAttention ``mask_mod(b, h, q, kv)`` reading the packed batch's metadata."""

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_idx, kv_idx, doc_ids[b, q_idx], doc_ids[b, kv_idx],
                       roles[b, q_idx], roles[b, kv_idx])

    return mask_mod


def block_structure(doc_ids: torch.Tensor, roles: torch.Tensor, block_size: int):
    """Which (query block, key block) tiles need attention, from document ranges alone.

    O(rows * blocks^2) on block summaries, no S x S evaluation. A tile is *needed* when it is
    on the diagonal (every token sees itself) or lies on/below it and the two blocks' document
    ranges intersect: every allowed pair shares a document, so this is a superset of the tiles
    with an allowed pair. A needed tile is *full* (no mask_mod) when it is strictly below the
    diagonal, both blocks hold one and the same document with no padding, and every key is
    TEXT (visible to every role). Returns boolean ``(partial, full)`` of shape [rows, nq, nk].
    """
    rows, s = doc_ids.shape
    n = -(-s // block_size)
    pad = n * block_size - s
    d = torch.nn.functional.pad(doc_ids, (0, pad), value=PAD_DOC).view(rows, n, block_size)
    r = torch.nn.functional.pad(roles, (0, pad), value=TEXT).view(rows, n, block_size)
    real = d != PAD_DOC
    dmin = torch.where(real, d, torch.iinfo(d.dtype).max).amin(-1)
    dmax = torch.where(real, d, PAD_DOC).amax(-1)
    has = real.any(-1)
    qi = torch.arange(n, device=d.device)[None, :, None]
    ki = torch.arange(n, device=d.device)[None, None, :]
    overlap = (has[:, :, None] & has[:, None, :] & (dmin[:, :, None] <= dmax[:, None, :])
               & (dmin[:, None, :] <= dmax[:, :, None]))
    needed = (overlap & (ki <= qi)) | (ki == qi)
    single = real.all(-1) & (dmin == dmax)
    text_keys = (r == TEXT).all(-1)
    full = (single[:, :, None] & single[:, None, :] & (dmin[:, :, None] == dmin[:, None, :])
            & text_keys[:, None, :] & (ki < qi))
    return needed & ~full, full


def _as_indices(m: torch.Tensor):
    """[rows, nq, nk] bool -> (num [rows, 1, nq], indices [rows, 1, nq, nk]), listed first."""
    num = m.sum(-1, dtype=torch.int32)
    order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True)
    return num[:, None], order.to(torch.int32)[:, None]


def block_mask(doc_ids: torch.Tensor, roles: torch.Tensor, *, block_size: int = 128):
    """FlexAttention ``BlockMask`` for the packed batch.

    The sparse tile structure comes from :func:`block_structure` (document ranges, cheap);
    inside partial tiles FlexAttention evaluates :func:`allowed` itself, so the result is
    exactly the rule.
    """
    from torch.nn.attention.flex_attention import BlockMask

    s = doc_ids.shape[1]
    partial, full = block_structure(doc_ids, roles, block_size)
    kv_num, kv_idx = _as_indices(partial)
    full_num, full_idx = _as_indices(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod_for(doc_ids, roles), seq_lengths=(s, s))


def attention_mask_for(model, doc_ids: torch.Tensor, roles: torch.Tensor, dtype=None):
    """The mask object the model's ``attn_implementation`` expects, built from the rule."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "flex_attention":
        return block_mask(doc_ids, roles)
    if impl == "sdpa":
        return dense_mask(doc_ids, roles)
    if impl == "eager":
        return additive_mask(doc_ids, roles, dtype or next(model.parameters()).dtype)
    raise ValueError(
        f"attention implementation {impl!r} is not supported by megajepa's packed masks; "
        "use attn_implementation='sdpa', 'flex_attention' or 'eager'")
