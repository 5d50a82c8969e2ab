"""Training metrics in one place: analytic FLOPs/MFU, TensorBoard + ``metrics.jsonl`` logging.

FLOPs of one step (forward + backward = 3x forward, matmuls at 2 FLOPs per MAC)::

    6 * N_body * real_tokens                       all linear layers of the decoder
  + 6 * V * D * label_tokens                       LM head, only where labels exist
  + 12 * L * H * d_head * attended_pairs            QK^T and AV over *unmasked* (q, kv) pairs

``attended_pairs`` counts exactly the pairs the attention rule allows, from the packed
metadata in O(rows * seq_len) on the host (no S x S mask); the loader stores it in each
batch's ``stats``, averaged over the layers for a model with sliding-window layers (each
layer's window applied: :func:`layer_mean_pairs`). MFU = achieved FLOP/s / device peak.

``metrics.jsonl`` is strict JSON: a non-finite value (a skipped step's NaN loss or infinite
gradient norm) is written as ``null``; TensorBoard gets the value itself under the same tag.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import time

import numpy as np
import torch

from megajepa.layout import ANSWER, PAD_DOC, PRED, TEXT

# Dense bf16 peak TFLOP/s of common accelerators (no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def device_peak_tflops(override: float = 0.0) -> float:
    if override > 0:
        return override
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value
    return 0.0


def attended_pairs(doc_ids, roles, positions=None, window: int | None = None) -> int:
    """Number of (q, kv) pairs the attention rule allows, excluding padding.

    For a query q: (TEXT tokens at or before q in its document) + (tokens of q's own role at or
    before q, when that role is not TEXT): running counts per document and role, vectorized
    with numpy over the whole ``[rows, seq_len]`` batch (host arrays; tensors are copied to
    the host). The loader calls it where it builds each batch, so the loop never walks rows.

    With a sliding ``window`` (over ``positions``, megajepa.masking), the keys of those
    counts whose position is ``window`` or more before q's are taken off: per role, a sorted
    array of (document, position) keys answers each query with one binary search. Positions
    never decrease along one role of one document, so those keys all precede q.
    """
    return _pair_counts(doc_ids, roles, positions, [window])[window]


def _pair_counts(doc_ids, roles, positions, windows) -> dict:
    """``{window: attended pairs}`` for each of ``windows`` (None: the rule alone), sharing
    the per-role running counts: each window only takes off its own outside keys."""
    d = _host(doc_ids).astype(np.int64)
    ro = _host(roles).reshape(-1)
    rows = d.shape[0]
    real = (d != PAD_DOC).reshape(-1)
    if not real.any():
        return dict.fromkeys(windows, 0)
    key = (d + 1 + np.arange(rows)[:, None] * (int(d.max()) + 2)).reshape(-1)  # unique per row
    new = np.ones(key.shape, dtype=bool)
    new[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(new)
    seg = np.cumsum(new) - 1
    sliding = [w for w in windows if w is not None]
    pos = _host(positions).reshape(-1).astype(np.int64) if sliding else None
    full, outside = 0, dict.fromkeys(sliding, 0)
    for role in (TEXT, ANSWER, PRED):
        is_r = ro == role
        cum = np.cumsum(is_r.astype(np.int64))
        within = cum - (cum - is_r)[starts][seg]  # running count inside the document
        queries = real if role == TEXT else real & is_r
        full += int(within[queries].sum())
        for w in sliding:
            outside[w] += _outside_window(key, pos, is_r & real, queries, w)
    return {w: full - outside.get(w, 0) for w in windows}


def _outside_window(key, pos, keys, queries, window: int) -> int:
    """Sum over ``queries`` of the ``keys`` in the query's document whose position is at
    least ``window`` below the query's."""
    span = int(pos.max()) + 1
    ks = np.sort(key[keys] * span + pos[keys])
    q = np.flatnonzero(queries)
    cut = pos[q] - window  # keys at or below this position are outside the window
    q, cut = q[cut >= 0], cut[cut >= 0]
    lo = np.searchsorted(ks, key[q] * span, side="left")
    hi = np.searchsorted(ks, key[q] * span + cut, side="right")
    return int((hi - lo).sum())


def layer_mean_pairs(doc_ids, roles, positions, windows) -> float:
    """:func:`attended_pairs` averaged over the layers of a model whose layer ``l`` has the
    sliding window ``windows[l]`` (None: full attention; megajepa.masking.window_per_layer)."""
    pairs = _pair_counts(doc_ids, roles, positions, list(set(windows)))
    return sum(pairs[w] for w in windows) / len(windows)


def _host(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class FlopCounter:
    """Analytic FLOPs per batch for a Llama-style config."""

    def __init__(self, config):
        d, L = config.hidden_size, config.num_hidden_layers
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        hd = getattr(config, "head_dim", None) or d // heads
        ffn = config.intermediate_size
        self.attn_dim = heads * hd
        self.layers = L
        self.body = L * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ffn)
        self.head = config.vocab_size * d

    def step_flops(self, real_tokens: int, label_tokens: int, pairs: int) -> float:
        return (6.0 * self.body * real_tokens + 6.0 * self.head * label_tokens
                + 12.0 * self.layers * self.attn_dim * pairs)


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    except Exception:  # noqa: BLE001
        return 0.0


def _finite_or_none(value):
    """``None`` for NaN and +-inf (JSON has no such numbers), the value otherwise."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Rank-0 sink: TensorBoard scalars/text and one JSON object per logged step."""

    def __init__(self, run_dir: str, *, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.writer = None
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(run_dir, exist_ok=True)
        # purge_step: TensorBoard hides older events at or past it (a resume, or a fresh start)
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=resume_step)
        if os.path.exists(self.path):
            self._truncate_after(resume_step)  # a fresh start (step 0) begins a new file

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint so the file reads as one clean run."""
        with open(self.path) as fh:
            keep = [ln for ln in fh if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with open(self.path, "w") as fh:
            fh.writelines(keep)

    def text(self, tag: str, text: str) -> None:
        if self.writer:
            self.writer.add_text(tag, f"```\n{text}\n```")

    def log(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        for k, v in scalars.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)
        clean = {k: _finite_or_none(v) for k, v in scalars.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **clean}, allow_nan=False) + "\n")

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()
