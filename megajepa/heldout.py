"""Held-out evaluation the training loop calls: periodic losses and representation
diagnostics, every ``train.eval_every`` steps (the final generation eval is
:mod:`megajepa.launch`'s).

:func:`held_out_metrics` (collective, every rank): LM/JEPA losses of the first
``max_batches`` packed micro-batches of ``data.eval_store`` per rank, normalized by the
  global label-token / pair counts; the collapse metrics of the JEPA read-outs of the same
  forwards (the engine returns their hidden states), laid out as training reads them
  (``jepa.k``, ``jepa.read_at``; :func:`megajepa.collapse.collapse_metrics`: paired and
  shuffled cosine, effective ranks); and ``Enc(Text)`` / ``Enc(Code)`` diagnostics
  (:func:`megajepa.collapse.diagnostics`) from one more forward of the same examples in the
  k = 0 layout, on rank 0. The eval loader is built at the first eval and rewound at each
  later one, so every eval sees the same batches.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from megajepa import stp
from megajepa.collapse import METRICS, collapse_metrics, diagnostics
from megajepa.config import stp_spec
from megajepa.data import RunData
from megajepa.layout import pack, to_device
from megajepa.loader import PackedLoader
from megajepa.objective import hidden_states, jepa_count


@torch.no_grad()
def held_out_metrics(engine, cfg, data: RunData, rank: int, world: int, device,
                     max_batches: int = 4) -> dict:
    """``{"scalars": {eval/lm_loss, eval/jepa_loss, eval/<collapse metric>...},
    "diagnostics": ...}`` (collective)."""
    j = cfg.jepa
    loader = _eval_loader(cfg, data, rank, world)
    n = min(max_batches, loader.steps_per_epoch)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # lm sum, labels, jepa sum, pairs
    text, code, preds, targets = [], [], [], []
    engine.eval()
    for _ in range(n):
        b = next(loader)
        if j.objective == "stp":  # the same spans at every eval: seed 0
            stp.attach(b, stp_spec(j), seed=0)
        _, lm, jl, _, _, h = engine(b, lm_denominator=1.0, jepa_denominator=1.0, return_hidden=True)
        sums += torch.stack([lm.double(), torch.tensor(float(b.num_label_tokens), device=device),
                             jl.double(), torch.tensor(jepa_count(b, j.objective), device=device)])
        if j.objective == "views":  # the rows the JEPA loss compares (lambda 0: untrained <pred>)
            flat = h.reshape(-1, h.shape[-1]).float()
            preds.append(flat.index_select(0, to_device(b.pred_index, flat.device)))
            targets.append(flat.index_select(0, to_device(b.target_index, flat.device)))
        # Enc(Text) and Enc(Code): the k = 0 layout reads the last text token and the code.
        examples = [data.eval_store.example(i) for row in loader.rows_of(0, loader.cursor - 1)
                    for i in row]
        b0 = pack(examples, cfg.data.seq_len, k=0, pred_ids=[], pad_id=data.pad_id).to(device)
        h = hidden_states(engine.module.lm, b0.input_ids, b0.position_ids, b0.doc_ids, b0.roles)
        flat = h.reshape(-1, h.shape[-1]).float()
        text.append(flat[b0.pred_index])
        code.append(flat[b0.target_index])
    engine.train()
    dist.all_reduce(sums)
    scalars = {"eval/lm_loss": (sums[0] / sums[1].clamp_min(1)).item(),
               "eval/jepa_loss": (sums[2] / sums[3].clamp_min(1)).item()}
    out = {"scalars": scalars}
    if preds:
        scalars.update(_collapse(torch.cat(preds), torch.cat(targets), rank, world))
    if text:
        t, c = torch.cat(text), torch.cat(code)
        gathered = [None] * world
        dist.all_gather_object(gathered, (t.cpu().numpy(), c.cpu().numpy()))
        if rank == 0:
            t = np.concatenate([g[0] for g in gathered])
            c = np.concatenate([g[1] for g in gathered])
            if len(t) >= 2:
                out["diagnostics"] = diagnostics(t, c)
    return out


def _eval_loader(cfg, data: RunData, rank: int, world: int) -> PackedLoader:
    """The held-out loader: built at the first eval (``data.eval_loader``), rewound to the
    start at every eval (seed 0: the same batches each time)."""
    if data.eval_loader is None:
        j = cfg.jepa
        data.eval_loader = PackedLoader(
            data.eval_store, seq_len=cfg.data.seq_len, micro_batch_rows=cfg.data.micro_batch_rows,
            k=j.k, pred_ids=data.pred_ids, pad_id=data.pad_id, seed=0, rank=rank, world_size=world,
            jepa_ratio=1.0 if j.objective == "views" else 0.0, jepa_pairs=j.jepa_pairs,
            reverse=j.reverse, read_at=j.read_at, lm_on_all=cfg.data.lm_on_all,
            overflow=cfg.data.overflow)
    data.eval_loader.load_state_dict(dict(data.eval_loader.state_dict(), epoch=0, cursor=0))
    return data.eval_loader


def _collapse(pred, target, rank: int, world: int) -> dict:
    """``eval/<metric>`` of :func:`megajepa.collapse.collapse_metrics` over every rank's
    read-outs (collective; rank 0 returns them, at least 2 pairs needed)."""
    gathered = [None] * world
    dist.all_gather_object(gathered, (pred.cpu().numpy(), target.cpu().numpy()))
    if rank != 0:
        return {}
    p = np.concatenate([g[0] for g in gathered])
    t = np.concatenate([g[1] for g in gathered])
    if len(p) < 2:
        return {}
    m = collapse_metrics(p, t)
    return {f"eval/{k}": m[k] for k in METRICS} | {"eval/pairs": m["n"]}
