"""DeepSpeed configuration: the JSON in ``ds_configs/`` plus the values the run config owns.

The run config is the single source of truth for batch sizes, gradient clipping, precision,
the optimizer and the LR schedule. A DeepSpeed file leaves those fields ``"auto"`` (or omits
them); :func:`resolve` fills them in. A file that sets one of them to a different value is an
error that names the field, the file and the fix: never a silent override.
"""
from __future__ import annotations

import copy
import json
import os

from megajepa.config import Config

# Sections that belong to the run config (client optimizer and scheduler in train.py).
_OWNED_SECTIONS = ("optimizer", "scheduler")


def load_json(path: str) -> dict:
    if not os.path.exists(path):
        here = os.path.join(os.path.dirname(os.path.dirname(__file__)), path)
        if os.path.exists(here):
            path = here
        else:
            raise ValueError(f"train.ds_config {path!r}: no such file (see ds_configs/)")
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"train.ds_config {path}: invalid JSON: {e}") from None


def _set(ds: dict, keys: tuple, value, origin: str, path: str) -> None:
    node = ds
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    have = node.get(keys[-1], "auto")
    if have != "auto" and have != value:
        name = ".".join(keys)
        raise ValueError(
            f"{path} sets {name}={have!r} but the run config says {origin}={value!r}; "
            f"set it to \"auto\" in {path} (the run config owns it) or change {origin}")
    node[keys[-1]] = value


def resolve(cfg: Config, world_size: int, *, bf16: bool, skip_nonfinite: bool = False) -> dict:
    """The DeepSpeed config dict for this run, validated against ``cfg``."""
    path = cfg.train.ds_config
    ds = copy.deepcopy(load_json(path))
    for section in _OWNED_SECTIONS:
        if section in ds:
            raise ValueError(
                f"{path} has an {section!r} section, but megajepa builds the {section} from the "
                f"run config (optim.*); remove it from {path}")
    micro, gas = cfg.data.micro_batch_rows, cfg.optim.grad_accum
    _set(ds, ("train_micro_batch_size_per_gpu",), micro, "data.micro_batch_rows", path)
    _set(ds, ("gradient_accumulation_steps",), gas, "optim.grad_accum", path)
    _set(ds, ("train_batch_size",), micro * gas * world_size,
         "data.micro_batch_rows * optim.grad_accum * world_size", path)
    _set(ds, ("gradient_clipping",), float(cfg.optim.grad_clip), "optim.grad_clip", path)
    _set(ds, ("bf16", "enabled"), bool(bf16), "train.precision", path)
    if ds.get("fp16", {}).get("enabled") is True:
        raise ValueError(f"{path} enables fp16; megajepa trains in bf16 or fp32 (train.precision)")
    stage = zero_stage(ds)
    if skip_nonfinite:
        if stage == 0:
            raise ValueError(
                "train.on_nonfinite=skip needs a ZeRO optimizer (stage >= 1), which detects the "
                f"non-finite gradient and drops the update; {path} is stage 0: use "
                "ds_configs/zero1.json or train.on_nonfinite=stop")
        if bf16:
            ds["bf16"]["check_grad_overflow"] = True
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict) -> bool:
    dev = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return dev not in (None, "none")
