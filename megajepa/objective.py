"""The LLM-JEPA objective on a packed batch:

    loss = gamma * CE(next tokens) + lambda * d(Pred(Enc(Text)), Enc(Code))

``mode="single_pass"`` runs the model once over the packed rows with the mask of
``masking.py``; every JEPA read-out is a row of that one hidden-state tensor.
``mode="three_pass"`` is the paper's original formulation, kept as the oracle and for
ablation: it rebuilds from the same batch (1) the LM sequences without predictor tokens,
(2) the sequence each predictor read-out sees and (3) the sequence each target read-out sees,
and runs three separate packed forwards with plain per-document causal masks. The tests check
that both modes give the same losses and that both equal unpacked forwards.

Normalization: ``lm_loss = sum(CE) / lm_denominator`` and
``jepa_loss = sum(d) / jepa_denominator``. Left ``None`` they are this batch's own counts; a
training loop passes the *global* counts (over micro-batches, accumulation steps and ranks),
as floats or 0-dim device tensors (no host read), so the gradient does not depend on how a
global batch is split.

Distances ``d``: ``cosine`` (1 - cos, default; fused Triton kernel when available), ``l2``
(Euclidean distance), ``mse`` (mean squared error over the hidden dimension) and ``infonce``
(cross-entropy of each prediction against all targets of the batch, temperature ``tau``).

``objective="stp"`` (Semantic Tube Prediction, ``megajepa/stp.py``): the same single forward as
next-token training on rows packed without JEPA segments, plus ``lambda * STP`` from the spans
in ``batch.stp``; ``jepa_loss`` is ``sum_spans w (1 - cos) / jepa_denominator`` (default: the
batch's weight sum, the span count when unweighted), ``cosine`` its mean cosine and
``num_pairs`` its span count. :func:`jepa_count` is what a loop sums globally for either.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPast

from megajepa import ops
from megajepa.layout import IGNORE_INDEX, PAD_DOC, PRED, TEXT, PackedBatch, plan_rows
from megajepa.masking import allowed, attention_mask_for

DISTANCES = ("cosine", "l2", "mse", "infonce")
MODES = ("single_pass", "three_pass")
OBJECTIVES = ("views", "stp")


@dataclass
class ForwardOutput:
    loss: torch.Tensor
    lm_loss: torch.Tensor
    jepa_loss: torch.Tensor
    cosine: torch.Tensor            # mean cosine of the JEPA pairs (a detached metric)
    num_label_tokens: int
    num_pairs: int
    hidden: torch.Tensor | None = None   # [rows, seq_len, dim], last layer after final norm


def hidden_states(model, input_ids, position_ids, doc_ids, roles) -> torch.Tensor:
    """Last-layer hidden states (after the final norm) of a packed batch."""
    mask = attention_mask_for(model, doc_ids, roles, position_ids)
    base = model.base_model
    out = base(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
               use_cache=False)
    return out.last_hidden_state


# --- the LM head: what the model's forward does after its last norm ---------------------

# Config attributes by which transformers' causal LMs transform ``z = lm_head(h)`` into their
# logits, and how: "scale" multiplies z (Cohere, Cohere2), "divide" divides it (the Granite
# family), "softcap" caps it last, ``cap * tanh(z / cap)`` (Gemma-2, Gemma-3). A model that does
# anything else is caught by :func:`check_lm_head`, which runs the model's own head.
LOGIT_TRANSFORMS = (("logit_scale", "scale"), ("logits_scaling", "divide"),
                    ("final_logit_softcapping", "softcap"))


@dataclass(frozen=True)
class LMHead:
    """``logits = softcap * tanh(scale * (h @ weight.T + bias) / softcap)`` (no cap: without
    the tanh); ``owner`` names the model and its settings in messages."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None
    owner: str = "the model"

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full fp32 logits (probes and tests; the loss never builds them)."""
        z = hidden @ self.weight.t()
        if self.bias is not None:
            z = z + self.bias
        return ops.transform_logits(z.float(), self.scale, self.softcap)


def lm_head(model) -> LMHead:
    """The model's LM head and its logit transform, read from the model (module and config)."""
    cfg = model.config.get_text_config()
    name = getattr(cfg, "model_type", None) or type(model).__name__
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{name}: the model has no LM head (output embeddings); megajepa trains causal LMs")
    scale, softcap, settings = 1.0, None, []
    for attr, kind in LOGIT_TRANSFORMS:
        value = getattr(cfg, attr, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: config.{attr}={value!r} is not a number; megajepa cannot apply it "
                             "to the logits")
        if kind == "softcap":
            softcap = float(value)
        elif value != 1:
            scale *= float(value) if kind == "scale" else 1.0 / float(value)
        settings.append(f"{attr}={value}")
    owner = f"{name} ({', '.join(settings)})" if settings else name
    return LMHead(head.weight, getattr(head, "bias", None), scale, softcap, owner)


def check_lm_head(model, head: LMHead | None = None, *, rows: int = 8, seed: int = 0) -> LMHead:
    """Refuse a model whose own logits are not ``head.logits`` of its final hidden states.

    Runs the model's forward with its decoder replaced by ``rows`` probe hidden states, so only
    the model's own head code runs (no layer, no mask): every transform it applies after the
    last norm is compared with ours. The probe is scaled so that the head's outputs have a
    standard deviation of 50, large enough for a soft cap to show. Under ZeRO-3 the head is
    gathered first (a collective: every rank calls this). Returns the head."""
    head = head or lm_head(model)
    params = [p for p in (head.weight, head.bias) if p is not None]
    gathered = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed  # only under ZeRO-3

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    decoder = model.get_decoder()
    with gathered, torch.no_grad():
        w = head.weight
        g = torch.Generator().manual_seed(seed)
        h = torch.randn(1, rows, w.shape[1], generator=g).to(w.device, w.dtype)
        h = h * (50.0 / (h @ w.t()).float().std().clamp_min(1e-6)).to(w.dtype)
        decoder.forward = lambda *a, **kw: BaseModelOutputWithPast(last_hidden_state=h)
        try:
            theirs = model(input_ids=torch.zeros(1, rows, dtype=torch.long, device=w.device),
                           use_cache=False).logits.float()
        finally:
            del decoder.forward
        ours = head.logits(h)
    tol = 1e-4 if w.dtype in (torch.float32, torch.float64) else 2e-2
    diff = (theirs - ours).abs().max().item()
    if diff > tol * max(1.0, ours.abs().max().item()):
        raise ValueError(f"{head.owner}: the model's own logits differ from megajepa's loss head by up "
                         f"to {diff:.3g} (logits up to {ours.abs().max().item():.3g}); its forward "
                         "transforms the logits in a way megajepa does not read, so the LM loss would be "
                         "wrong")
    return head


def lm_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: LMHead, *,
                label_index: torch.Tensor | None = None, chunk_size: int = 4096,
                impl: str = "auto") -> torch.Tensor:
    """Summed next-token CE at labelled positions, without building [tokens, vocab] logits.
    ``label_index``: the flat labelled positions (``PackedBatch.label_index``, made on the
    host); without it they are found here, which on a GPU waits for the device."""
    flat_labels = labels.reshape(-1)
    sel = label_index if label_index is not None else \
        (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, sel)
    return ops.linear_cross_entropy(h, head.weight, flat_labels.index_select(0, sel),
                                    bias=head.bias, scale=head.scale, softcap=head.softcap,
                                    chunk_size=chunk_size, impl=impl, owner=head.owner)


def jepa_loss_sum(hidden_flat: torch.Tensor, pred_index: torch.Tensor,
                  target_index: torch.Tensor, *, distance: str = "cosine",
                  stopgrad_target: bool = False, temperature: float = 0.07,
                  impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of d over pairs, mean cosine) for read-outs given as flat row indices."""
    p = pred_index.numel()
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if p == 0:
        zero = hidden_flat.sum() * 0.0
        return zero.float(), torch.zeros((), device=hidden_flat.device)
    if distance == "cosine":
        mean, cos = ops.cosine_loss(hidden_flat, pred_index, target_index,
                                    stopgrad_target=stopgrad_target, impl=impl)
        return mean * p, cos
    pred = hidden_flat.index_select(0, pred_index).float()
    target = hidden_flat.index_select(0, target_index).float()
    if stopgrad_target:
        target = target.detach()
    cos = F.cosine_similarity(pred.detach(), target.detach(), dim=-1, eps=1e-8).mean()
    if distance == "l2":
        d = (pred - target).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    elif distance == "mse":
        d = (pred - target).pow(2).mean(-1)
    else:  # infonce: each prediction must pick its own target among the batch's targets
        logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
        d = F.cross_entropy(logits, torch.arange(p, device=logits.device), reduction="none")
    return d.sum(), cos


def stp_loss_sum(hidden_flat: torch.Tensor, spans, *, predictor=None,
                 impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over spans of ``w (1 - cos)``, mean cosine) of ``megajepa.stp.StpSpans``."""
    return ops.stp_loss(hidden_flat, spans.index, spans.span_coef, spans.rest_coef, spans.weight,
                        predictor=predictor, denominator=1.0, impl=impl)


def jepa_count(batch: PackedBatch, objective: str = "views") -> float:
    """This batch's share of the JEPA denominator: pairs (views) or span weights (stp)."""
    if objective == "stp":
        return batch.stp.weight_sum if batch.stp is not None else 0.0
    return float(batch.num_pairs)


def forward(model, batch: PackedBatch, *, lbd: float = 1.0, gamma: float = 1.0,
            distance: str = "cosine", mode: str = "single_pass", return_hidden: bool = False,
            stopgrad_target: bool = False, temperature: float = 0.07,
            lm_denominator: float | torch.Tensor | None = None,
            jepa_denominator: float | torch.Tensor | None = None,
            ce_chunk_size: int = 4096, kernels: str = "auto", objective: str = "views",
            stp_predictor=None) -> ForwardOutput:
    """LLM-JEPA loss of a packed batch for a Hugging Face causal LM (Llama family).

    ``lbd``/``gamma`` weight the JEPA and next-token terms; ``kernels="reference"`` forces
    the pure PyTorch loss paths (``"auto"`` uses the fused kernels where they run).
    ``objective="stp"`` adds STP on ``batch.stp`` instead (``stp_predictor``: the optional
    linear predictor module on the rest embedding).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "stp":
        _check_stp(batch, mode, distance, stopgrad_target)
    device = next(model.parameters()).device
    n_lab, n_pairs = batch.num_label_tokens, batch.num_pairs  # before the copy: no device read
    n_jepa = jepa_count(batch, objective)
    if objective == "stp":
        n_pairs = batch.stp.num_spans
    batch = batch.to(device)
    # A denominator may be a 0-dim device tensor (the loop's global counts): used as is.
    lm_den = float(max(n_lab, 1)) if lm_denominator is None else lm_denominator
    jepa_den = (n_jepa if n_jepa > 0 else 1.0) if jepa_denominator is None else jepa_denominator
    ce_impl = {"auto": "auto", "reference": "chunked"}[kernels]
    cos_impl = {"auto": "auto", "reference": "torch"}[kernels]
    head = lm_head(model)

    if mode == "single_pass":
        hidden = hidden_states(model, batch.input_ids, batch.position_ids, batch.doc_ids,
                               batch.roles)
        lm_sum = lm_loss_sum(hidden, batch.labels, head, label_index=batch.label_index,
                             chunk_size=ce_chunk_size, impl=ce_impl)
        flat = hidden.reshape(-1, hidden.shape[-1])
        pred_index, target_index = batch.pred_index, batch.target_index
    else:
        hidden = None
        lm_sum, flat, pred_index, target_index = _three_pass(model, batch, head,
                                                             ce_chunk_size, ce_impl)
    with torch.set_grad_enabled(torch.is_grad_enabled() and lbd != 0):
        if objective == "stp":
            jepa_sum, cos = stp_loss_sum(flat, batch.stp, predictor=stp_predictor, impl=cos_impl)
        else:
            jepa_sum, cos = jepa_loss_sum(flat, pred_index, target_index, distance=distance,
                                          stopgrad_target=stopgrad_target,
                                          temperature=temperature, impl=cos_impl)
    lm_loss = lm_sum / lm_den
    jepa_loss = jepa_sum / jepa_den
    loss = gamma * lm_loss + (lbd * jepa_loss if lbd != 0 else 0.0 * lm_loss)
    return ForwardOutput(loss=loss, lm_loss=lm_loss, jepa_loss=jepa_loss,
                         cosine=cos.detach(), num_label_tokens=n_lab, num_pairs=n_pairs,
                         hidden=hidden if return_hidden else None)


def _check_stp(batch: PackedBatch, mode: str, distance: str, stopgrad_target: bool) -> None:
    if batch.stp is None:
        raise ValueError("objective='stp' needs spans on the batch (megajepa.stp.attach)")
    if mode != "single_pass":
        raise ValueError(f"objective='stp' runs in mode='single_pass' only, got {mode!r}")
    if distance != "cosine":
        raise ValueError(f"objective='stp' uses the cosine distance (the reference's), got {distance!r}")
    if stopgrad_target:
        raise ValueError("stopgrad_target does not apply to objective='stp'")
    if batch.num_pairs:
        raise ValueError("objective='stp' needs rows packed without JEPA segments (jepa_ratio=0 or k=0), "
                         f"got {batch.num_pairs} JEPA pairs")


# --- the three-pass oracle -------------------------------------------------------------
# Bookkeeping runs on CPU copies of the metadata (numpy); each pass moves to the device once.

def _visible(meta: dict, flat_index: int) -> np.ndarray:
    """Flat positions that the token at ``flat_index`` may attend to, in order."""
    s = meta["seq_len"]
    r, q = divmod(flat_index, s)
    kv = np.arange(q + 1)
    ok = allowed(q, kv, meta["doc_ids"][r, q], meta["doc_ids"][r, :q + 1],
                 meta["roles"][r, q], meta["roles"][r, :q + 1])
    return r * s + kv[ok]


def _lm_sequences(meta: dict) -> list[np.ndarray]:
    """Flat positions of each labelled document with its predictor tokens removed."""
    seqs = []
    s = meta["seq_len"]
    for r in range(meta["doc_ids"].shape[0]):
        docs, roles, labels = meta["doc_ids"][r], meta["roles"][r], meta["labels"][r]
        for d in np.unique(docs):
            if d == PAD_DOC:
                continue
            pos = np.flatnonzero((docs == d) & (roles != PRED))
            if (labels[pos] != IGNORE_INDEX).any():
                seqs.append(r * s + pos)
    return seqs


def _packed_pass(model, meta: dict, seqs: list[np.ndarray], device):
    """Run ``seqs`` (arrays of flat positions of the batch) as plain causal documents packed
    into rows; return the hidden states [rows*seq_len, D], the labels, their flat labelled
    positions and, per sequence, the flat index of its last token in this pass."""
    seq_len = meta["seq_len"]
    flat_ids, flat_labels, flat_pos = (meta[k].reshape(-1) for k in ("input_ids", "labels",
                                                                      "position_ids"))
    rows = plan_rows([len(q) for q in seqs], seq_len)
    n = max(len(rows), 1)
    ids = np.zeros((n, seq_len), dtype=np.int64)
    pos = np.zeros_like(ids)
    docs = np.full_like(ids, PAD_DOC)
    labels = np.full_like(ids, IGNORE_INDEX)
    last = [0] * len(seqs)
    for r, members in enumerate(rows):
        c = 0
        for j, i in enumerate(members):
            src, m = seqs[i], len(seqs[i])
            # Each logical sequence must carry positions 0..m-1 to equal a run on its own.
            if not np.array_equal(flat_pos[src], np.arange(m)):
                raise ValueError("a logical sequence of the packed batch has non-contiguous positions")
            ids[r, c:c + m] = flat_ids[src]
            labels[r, c:c + m] = flat_labels[src]
            pos[r, c:c + m] = np.arange(m)
            docs[r, c:c + m] = j
            last[i] = r * seq_len + c + m - 1
            c += m
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    h = hidden_states(model, t(ids), t(pos), t(docs), torch.full_like(t(ids), TEXT))
    labelled = np.flatnonzero(labels.reshape(-1) != IGNORE_INDEX)
    return h.reshape(-1, h.shape[-1]), t(labels), t(labelled), last


def _three_pass(model, batch: PackedBatch, head: LMHead, chunk_size, impl):
    device = batch.input_ids.device
    meta = {k: getattr(batch, k).cpu().numpy() for k in ("input_ids", "position_ids", "doc_ids",
                                                         "roles", "labels")}
    meta["seq_len"] = batch.input_ids.shape[1]
    h_lm, lm_labels, lm_index, _ = _packed_pass(model, meta, _lm_sequences(meta), device)
    lm_sum = lm_loss_sum(h_lm, lm_labels, head, label_index=lm_index, chunk_size=chunk_size,
                         impl=impl)
    pred_list, target_list = batch.pred_index.tolist(), batch.target_index.tolist()
    if not pred_list:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return lm_sum, h_lm, empty, empty
    reads = []
    for index in (pred_list, target_list):
        uniq = sorted(set(index))
        h, _, _, last = _packed_pass(model, meta, [_visible(meta, q) for q in uniq], device)
        reads.append((h, dict(zip(uniq, last))))
    (h_pred, at_pred), (h_tgt, at_tgt) = reads
    off = h_pred.shape[0]
    pred_index = torch.tensor([at_pred[q] for q in pred_list], device=device)
    target_index = torch.tensor([off + at_tgt[q] for q in target_list], device=device)
    return lm_sum, torch.cat([h_pred, h_tgt]), pred_index, target_index
