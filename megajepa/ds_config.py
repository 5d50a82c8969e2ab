"""DeepSpeed configuration: the JSON in ``ds_configs/`` plus the values the run config owns.

The run config is the single source of truth for batch sizes, gradient clipping, precision,
the optimizer and the LR schedule. A DeepSpeed file leaves those fields ``"auto"`` (or omits
them); :func:`resolve` fills them in. A file that sets one of them to a different value is an
error that names the field, the file and the fix: never a silent override.

DeepSpeed's batch unit is whatever one micro-batch holds: packed rows
(``data.micro_batch_rows``), or under the examples budget (``data.micro_batch_examples > 0``)
examples, whose rows vary. ``train_micro_batch_size_per_gpu`` and ``train_batch_size``
(``micro x grad_accum x world``) are written in that unit; DeepSpeed only checks and logs
them (the loop feeds the engine its own batches and normalizes the losses by global counts).

``train.ds_config = auto`` (the default) picks the file from the model size, the world size
and the GPU memory (:func:`choose`): the stage with the least communication whose weights,
gradients and AdamW state fit in ``STATE_BUDGET`` of one GPU's memory, leaving the rest for
activations::

    bytes per parameter per GPU (bf16 weights and gradients, fp32 master + moments; N ranks)
    zero1  4 + 12/N    gradients all-reduced once per optimizer step (like DDP)
    zero2  2 + 14/N    gradients reduce-scattered every micro-batch
    zero3  16/N        + every layer's weights all-gathered in forward and again in backward
    zero3_offload      optimizer state and weights in host memory (slowest)

One process partitions nothing (N = 1), so there ``auto`` is zero0 whenever its 16 bytes per
parameter fit (1B and 3B on an 80 GB GPU, any size on a CPU) and zero3_offload otherwise (8B on
one GPU). Measured (docs/benchmarks.md): ZeRO-1's step over a flattened copy of the weights cost
1.5x ZeRO-0's at SmolLM2-135M on one CPU thread, and 2% more time and 0.4 GiB more memory at
Llama-3.2-1B on one H100. zero1 instead of zero0 when ``train.on_nonfinite = skip`` needs a
ZeRO optimizer; several ranks: the table above (several CPU ranks: zero1).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os

import torch

from megajepa.config import Config
from megajepa.model import estimate_parameters
from megajepa.presets import PRESETS

log = logging.getLogger("megajepa")

# Model-state bytes per parameter per GPU with N data-parallel ranks (docs/training.md).
STATE_BYTES = {
    "ds_configs/zero1.json": lambda n: 4 + 12 / n,
    "ds_configs/zero2.json": lambda n: 2 + 14 / n,
    "ds_configs/zero3.json": lambda n: 16 / n,
}
ZERO0_BYTES = 16  # one rank, no ZeRO: bf16 weights and gradients, fp32 master and moments
OFFLOAD = "ds_configs/zero3_offload.json"
STATE_BUDGET = 0.7  # of one GPU's memory; the rest is for activations and buffers


def gpu_memory_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def choose(params: int, world_size: int, gpu_memory: int | None, *,
           skip_nonfinite: bool = False) -> tuple[str, str]:
    """``(ds_configs file, why)`` for ``params`` parameters on ``world_size`` GPUs with
    ``gpu_memory`` bytes each (None: a CPU run); ``skip_nonfinite`` (train.on_nonfinite=skip)
    needs a ZeRO optimizer (stage >= 1), which finds the non-finite gradient."""
    if gpu_memory is None:
        if world_size > 1:
            return "ds_configs/zero1.json", f"CPU run, {world_size} ranks: optimizer state partitioned"
        if skip_nonfinite:
            return "ds_configs/zero1.json", "one CPU process; train.on_nonfinite=skip needs a ZeRO optimizer"
        return "ds_configs/zero0.json", ("one CPU process: ZeRO-1 would partition nothing and its step "
                                         "over flattened weights is slower (docs/benchmarks.md)")
    budget = STATE_BUDGET * gpu_memory
    if world_size == 1 and not skip_nonfinite and ZERO0_BYTES * params <= budget:
        return "ds_configs/zero0.json", (f"{params / 1e9:.2f}B parameters on one GPU: nothing to "
                                         f"partition; model states {ZERO0_BYTES * params / 2**30:.1f} GiB "
                                         f"<= {STATE_BUDGET:.0%} of {gpu_memory / 2**30:.0f} GiB")
    for path, per_param in STATE_BYTES.items():
        need = per_param(world_size) * params
        if need <= budget:
            return path, (f"{params / 1e9:.2f}B parameters on {world_size} GPU(s): model states "
                          f"{need / 2**30:.1f} GiB per GPU <= {STATE_BUDGET:.0%} of "
                          f"{gpu_memory / 2**30:.0f} GiB")
    return OFFLOAD, (f"{params / 1e9:.2f}B parameters on {world_size} GPU(s): even ZeRO-3 needs "
                     f"{16 / world_size * params / 2**30:.1f} GiB per GPU > {STATE_BUDGET:.0%} of "
                     f"{gpu_memory / 2**30:.0f} GiB")


def auto_path(cfg: Config, world_size: int, gpu_memory: int | None = None) -> tuple[str, str]:
    """The file ``train.ds_config = auto`` stands for in this run."""
    if gpu_memory is None:
        gpu_memory = gpu_memory_bytes()
    if gpu_memory is None:
        return choose(0, world_size, None, skip_nonfinite=cfg.train.on_nonfinite == "skip")
    m = cfg.model
    params = estimate_parameters(preset=None if m.init_from else m.preset, init_from=m.init_from)
    return choose(params, world_size, gpu_memory, skip_nonfinite=cfg.train.on_nonfinite == "skip")


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
    if path == "auto":
        path, why = auto_path(cfg, world_size)
        log.info("train.ds_config=auto: %s (%s)", path, why)
    ds = copy.deepcopy(load_json(path))
    for section in _OWNED_SECTIONS:
        if section in ds:
            raise ValueError(
                f"{path} has an {section!r} section, but megajepa builds the {section} from the "
                f"run config (optim.*); remove it from {path}")
    by = "data.micro_batch_examples" if cfg.data.micro_batch_examples else "data.micro_batch_rows"
    micro, gas = getattr(cfg.data, by.split(".")[1]), cfg.optim.grad_accum
    _set(ds, ("train_micro_batch_size_per_gpu",), micro, by, path)
    _set(ds, ("gradient_accumulation_steps",), gas, "optim.grad_accum", path)
    _set(ds, ("train_batch_size",), micro * gas * world_size,
         f"{by} * optim.grad_accum * world_size", path)
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


def main(argv=None) -> int:
    """``python -m megajepa.ds_config --preset llama-3.1-8b --gpus 8``: what ``auto`` picks."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--preset", default="llama-3.2-1b", choices=sorted(PRESETS))
    p.add_argument("--init-from", default=None, help="HF model directory instead of a preset")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel ranks (all nodes)")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0)
    a = p.parse_args(argv)
    if a.gpus < 1 or a.gpu_memory_gib <= 0:
        p.error("--gpus and --gpu-memory-gib must be positive")
    params = estimate_parameters(preset=a.preset, init_from=a.init_from)
    mem = int(a.gpu_memory_gib * 2**30)
    path, why = choose(params, a.gpus, mem)
    print(f"{path}  ({why})")
    if a.gpus == 1:
        print(f"  {'ds_configs/zero0.json':<24} {ZERO0_BYTES * params / 2**30:7.1f} GiB model states per GPU")
    for f, per_param in STATE_BYTES.items():
        print(f"  {f:<24} {per_param(a.gpus) * params / 2**30:7.1f} GiB model states per GPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
