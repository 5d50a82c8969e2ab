"""Batched greedy generation from token-id prompts.

Prompts of different lengths are left-padded into one batch so every row's next token sits
in the last column::

    row 0:  pad pad  p0 p1 p2 | g0 g1 ...      attention_mask 0 0 1 1 1 | 1 1
    row 1:   p0  p1  p2 p3 p4 | g0 g1 ...      attention_mask 1 1 1 1 1 | 1 1

``model.generate`` derives position ids from the attention mask, so a padded row computes
what it would compute alone (a test checks batched == one-by-one == a plain argmax loop).
Prompts are sorted by length before batching (less padding) and results returned in input
order. Each result is the generated ids up to, not including, the first end-of-sequence.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

__all__ = ["generate_ids", "model_device"]


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _cut(ids: Sequence[int], stop: set) -> list:
    out = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out


@torch.no_grad()
def generate_ids(model, prompts: Sequence[Sequence[int]], *, eos_id: Union[int, Iterable[int]],
                 pad_id: Optional[int] = None, max_new_tokens: int = 128,
                 batch_size: int = 16) -> list:
    """Greedy continuations of ``prompts`` (lists of token ids), without the eos token."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    stop = {int(eos_id)} if isinstance(eos_id, int) else {int(e) for e in eos_id}
    if not stop:
        raise ValueError("need an end-of-sequence id to stop generation")
    pad = min(stop) if pad_id is None else int(pad_id)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    device = model_device(model)
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list = [None] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(prompts[i])
                input_ids[row, width - n:] = torch.as_tensor(list(prompts[i]), dtype=torch.long)
                mask[row, width - n:] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=pad, eos_token_id=sorted(stop))
            new = out[:, width:].tolist()
            for row, i in enumerate(idx):
                results[i] = _cut(new[row], stop)
    finally:
        model.train(was_training)
    return results
