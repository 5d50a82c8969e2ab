"""Training metrics in one place: analytic FLOPs/MFU, TensorBoard + ``metrics.jsonl`` logging.

FLOPs of one step (forward + backward = 3x forward, matmuls at 2 FLOPs per MAC)::

    6 * N_body * real_tokens                       all linear layers of the decoder
  + 6 * V * D * label_tokens                       LM head, only where labels exist
  + 12 * L * H * d_head * attended_pairs            QK^T and AV over *unmasked* (q, kv) pairs

``attended_pairs`` counts exactly the pairs the attention rule allows, from the packed
metadata in O(rows * seq_len) (no S x S mask). MFU = achieved FLOP/s / device peak.
"""
from __future__ import annotations

import json
import os
import time

import torch

from megajepa.layout import PAD_DOC, TEXT

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


def attended_pairs(doc_ids: torch.Tensor, roles: torch.Tensor) -> int:
    """Number of (q, kv) pairs the attention rule allows, excluding padding.

    For a query q: (TEXT tokens at or before q in its document) + (tokens of q's own role at or
    before q, when that role is not TEXT): a running count per document and role."""
    total = 0
    real = doc_ids != PAD_DOC
    for r in range(doc_ids.shape[0]):
        d, ro, ok = doc_ids[r], roles[r], real[r]
        if not ok.any():
            continue
        new_doc = torch.ones_like(d, dtype=torch.bool)
        new_doc[1:] = d[1:] != d[:-1]
        start = torch.cummax(torch.where(new_doc, torch.arange(len(d), device=d.device), 0), 0).values
        count = torch.zeros(len(d), dtype=torch.long, device=d.device)
        for role in range(3):
            is_r = (ro == role).long()
            cum = torch.cumsum(is_r, 0)
            within = cum - (cum[start] - is_r[start])  # running count inside the document
            if role == TEXT:
                count += within
            else:
                count += torch.where(ro == role, within, 0)
        total += int(count[ok].sum())
    return total


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
        clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in scalars.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()
