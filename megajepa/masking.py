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

**The model's own masking composes with the rule.** A sliding-window layer (Mistral, Phi-3,
Qwen2/3 with ``use_sliding_window``, the local layers of Gemma-2/3) lets a token see the
``W`` latest tokens of its sequence, itself included. Packed, "its sequence" is the logical
one, so the window is measured in ``position_ids`` (which restart in each document, and
continue after the text for predictors), not in row indices::

    windowed(q, kv) = allowed(q, kv) and (q == kv or pos[q] - pos[kv] < W)

Document A above with ``W = 3`` (positions on the left)::

               t0 t1 t2 c0 c1 c2 p1 p2
        t0 0    1
        t1 1    1  1
        t2 2    1  1  1
        c0 3       1  1  1
        c1 4          1  1  1
        c2 5             1  1  1
        p1 3       1  1           1
        p2 4          1           1  1

p2 sees t2, p1, p2: what it sees in ``t0 t1 t2 p1 p2`` run alone with the same window. Within
a logical sequence the position difference of an allowed pair is its distance in that
sequence, so every windowed layer equals the model's own unpacked forward too.
:func:`layer_windows` reads which layers have which window from the model's config.

Backends: :func:`dense_mask` (boolean ``[rows, 1, S, S]`` for SDPA; an additive float mask
for eager attention) and :func:`block_mask` (FlexAttention ``BlockMask``). All evaluate
:func:`allowed`; :func:`attention_mask_for` picks the form a model's attention needs, one
mask per distinct window, as a ``{layer type: mask}`` dict for models that mask per layer type.
"""
from __future__ import annotations

import inspect

import torch

from megajepa.layout import ANSWER, PAD_DOC, PRED, TEXT

# ALLOW[role_q][role_kv]: the table above, kept as data so tests can check the formula.
ALLOW = {
    TEXT: {TEXT},
    ANSWER: {TEXT, ANSWER},
    PRED: {TEXT, PRED},
}


def allowed(q_idx, kv_idx, doc_q, doc_kv, role_q, role_kv, pos_q=None, pos_kv=None,
            window: int | None = None):
    """The attention rule on broadcastable integer tensors (see the module docstring); with a
    ``window``, also ``pos_q - pos_kv < window`` (positions: ``position_ids``)."""
    same_doc = (doc_q == doc_kv) & (doc_q != PAD_DOC)
    role_ok = (role_kv == TEXT) | (role_kv == role_q)
    ok = same_doc & (kv_idx <= q_idx) & role_ok
    if window is not None:
        ok = ok & (pos_q - pos_kv < window)
    return ok | (q_idx == kv_idx)


# ------------------------------------------------------------ the model's own layer masking

FULL, SLIDING = "full_attention", "sliding_attention"


def layer_windows(config) -> dict[str | None, int | None]:
    """The model's own masking on top of causal attention, read from its config:
    ``{layer type: sliding window or None (full)}``.

    Models that mask per layer type (``config.layer_types``: Gemma-2/3, Qwen2/3, Cohere2,
    OLMo-3, ...) take ``{layer type: mask}``; the others (Llama, Mistral, Phi-3, OLMo-2, ...)
    take one mask for every layer, with ``config.sliding_window`` when it is set: the key is
    then ``None``. A model whose layers are all full attention gets ``{None: None}`` (one
    mask fits both kinds of model). Anything else is refused in one line.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = getattr(cfg, "model_type", type(cfg).__name__)
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ValueError(f"{name}: use_bidirectional_attention is set (an encoder, not a causal LM); "
                         "megajepa's packed masks are causal")
    if getattr(cfg, "attention_chunk_size", None):
        raise ValueError(f"{name}: attention_chunk_size={cfg.attention_chunk_size} (chunked attention) "
                         "has no packed mask in megajepa")
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not types:
        return {None: window}
    windows = {}
    for t in dict.fromkeys(types):
        if t == FULL:
            windows[t] = None
        elif t == SLIDING and window:
            windows[t] = int(window)
        else:
            raise ValueError(f"{name}: layer type {t!r} (config.layer_types) has no packed mask in "
                             f"megajepa (it composes {FULL!r} and {SLIDING!r} with sliding_window set)")
    return {None: None} if set(windows.values()) == {None} else windows


def window_per_layer(config) -> list[int | None]:
    """Each decoder layer's sliding window (None: full attention), from :func:`layer_windows`."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    windows = layer_windows(config)
    if None in windows:
        return [windows[None]] * cfg.num_hidden_layers
    return [windows[t] for t in cfg.layer_types]


# ----------------------------------------------------------------------- the mask forms

def dense_mask(doc_ids: torch.Tensor, roles: torch.Tensor, positions: torch.Tensor | None = None,
               window: int | None = None) -> torch.Tensor:
    """Boolean mask ``[rows, 1, S, S]``: True where query ``q`` may attend to ``kv``."""
    s = doc_ids.shape[-1]
    idx = torch.arange(s, device=doc_ids.device)
    pq = pk = None
    if window is not None:
        pq, pk = positions[:, :, None], positions[:, None, :]
    m = allowed(idx[:, None], idx[None, :], doc_ids[:, :, None], doc_ids[:, None, :],
                roles[:, :, None], roles[:, None, :], pq, pk, window)
    return m[:, None]


def additive_mask(doc_ids: torch.Tensor, roles: torch.Tensor, dtype: torch.dtype,
                  positions: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """Float mask for eager attention: 0 where allowed, the dtype's minimum elsewhere."""
    m = dense_mask(doc_ids, roles, positions, window)
    out = torch.zeros(m.shape, dtype=dtype, device=doc_ids.device)
    return out.masked_fill_(~m, torch.finfo(dtype).min)


def mask_mod_for(doc_ids: torch.Tensor, roles: torch.Tensor, positions: torch.Tensor | None = None,
                 window: int | None = None):
    """FlexAttention ``mask_mod(b, h, q, kv)`` reading the packed batch's metadata."""

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_idx, kv_idx, doc_ids[b, q_idx], doc_ids[b, kv_idx],
                       roles[b, q_idx], roles[b, kv_idx])

    def windowed_mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_idx, kv_idx, doc_ids[b, q_idx], doc_ids[b, kv_idx],
                       roles[b, q_idx], roles[b, kv_idx], positions[b, q_idx],
                       positions[b, kv_idx], window)

    return mask_mod if window is None else windowed_mask_mod


def block_structure(doc_ids: torch.Tensor, roles: torch.Tensor, block_size: int,
                    positions: torch.Tensor | None = None, window: int | None = None):
    """Which (query block, key block) tiles need attention, from document ranges alone.

    O(rows * blocks^2) on block summaries, no S x S evaluation. A tile is *needed* when it is
    on the diagonal (every token sees itself) or lies on/below it and the two blocks' document
    ranges intersect: every allowed pair shares a document, so this is a superset of the tiles
    with an allowed pair. A needed tile is *full* (no mask_mod) when it is strictly below the
    diagonal, both blocks hold one and the same document with no padding, and every key is
    TEXT (visible to every role). With a ``window`` (over ``positions``, see the module
    docstring; an allowed pair never has ``pos[kv] > pos[q]``), an off-diagonal tile is not
    needed when its smallest query position is ``window`` or more past its largest key
    position, and is full only when its largest query position is less than ``window`` past
    its smallest key position. Returns boolean ``(partial, full)`` of shape [rows, nq, nk].
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
    single = real.all(-1) & (dmin == dmax)
    text_keys = (r == TEXT).all(-1)
    full = (single[:, :, None] & single[:, None, :] & (dmin[:, :, None] == dmin[:, None, :])
            & text_keys[:, None, :] & (ki < qi))
    if window is not None:
        p = torch.nn.functional.pad(positions, (0, pad), value=0).view(rows, n, block_size)
        big = torch.iinfo(p.dtype).max
        pmin = torch.where(real, p, big).amin(-1)
        pmax = torch.where(real, p, -big).amax(-1)
        overlap = overlap & (pmin[:, :, None] - pmax[:, None, :] < window)
        full = full & (pmax[:, :, None] - pmin[:, None, :] < window)
    needed = (overlap & (ki <= qi)) | (ki == qi)
    return needed & ~full, full


def _as_indices(m: torch.Tensor):
    """[rows, nq, nk] bool -> (num [rows, 1, nq], indices [rows, 1, nq, nk]), listed first."""
    num = m.sum(-1, dtype=torch.int32)
    order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True)
    return num[:, None], order.to(torch.int32)[:, None]


def block_mask(doc_ids: torch.Tensor, roles: torch.Tensor, positions: torch.Tensor | None = None,
               window: int | None = None, *, block_size: int = 128):
    """FlexAttention ``BlockMask`` for the packed batch.

    The sparse tile structure comes from :func:`block_structure` (document ranges, cheap);
    inside partial tiles FlexAttention evaluates :func:`allowed` itself, so the result is
    exactly the rule.
    """
    from torch.nn.attention.flex_attention import BlockMask

    s = doc_ids.shape[1]
    partial, full = block_structure(doc_ids, roles, block_size, positions, window)
    kv_num, kv_idx = _as_indices(partial)
    full_num, full_idx = _as_indices(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod_for(doc_ids, roles, positions, window),
                                    seq_lengths=(s, s))


def attention_mask_for(model, doc_ids: torch.Tensor, roles: torch.Tensor,
                       positions: torch.Tensor | None = None, dtype=None):
    """The mask the model's ``attn_implementation`` expects, built from the rule and the
    model's own layer masking (:func:`layer_windows`): one mask for every layer, or a
    ``{layer type: mask}`` dict with one mask per distinct window."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "flex_attention":
        build = block_mask
    elif impl == "sdpa":
        build = dense_mask
    elif impl == "eager":
        dtype = dtype or next(model.parameters()).dtype
        build = lambda d, r, p, w: additive_mask(d, r, dtype, p, w)  # noqa: E731
    else:
        raise ValueError(
            f"attention implementation {impl!r} is not supported by megajepa's packed masks; "
            "use attn_implementation='sdpa', 'flex_attention' or 'eager'")
    if "position_ids" not in inspect.signature(model.base_model.forward).parameters:
        raise ValueError(f"{type(model).__name__}: its forward takes no position_ids (positions from "
                         "the row index, or ALiBi), so packed documents cannot restart their positions")
    windows = layer_windows(model.config)
    if any(w is not None for w in windows.values()) and positions is None:
        raise ValueError("a sliding-window model needs position_ids to build its packed masks")
    masks = {w: build(doc_ids, roles, positions, w) for w in dict.fromkeys(windows.values())}
    if None in windows:
        return masks[windows[None]]
    return {t: masks[w] for t, w in windows.items()}
