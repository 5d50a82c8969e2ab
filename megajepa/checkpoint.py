"""Crash-safe DeepSpeed checkpoints with client state.

Layout under ``<run_dir>/checkpoints``::

    step_00000100/            DeepSpeed's sharded model/optimizer files (every rank writes its own)
        client_rank0.pt       step, loader state, RNG states of rank 0 (one file per rank)
        config.yaml           the resolved run config
        COMPLETE              written last, by rank 0, after every rank has finished
    latest                    name of the newest COMPLETE tag, replaced atomically

A tag is ``step_`` and the step's digits, at least 8 (``step_100000000`` past 1e8); tags are
ordered by their step, never by their text. ``latest`` is only followed when it holds such a
plain name (a path such as ``../other/step_00000100`` is damage, like a missing file).

A save interrupted at any point leaves ``latest`` on the previous complete tag and the partial
directory without ``COMPLETE``; :func:`find_latest` never returns such a tag, and the next
successful save removes it. Old complete tags beyond ``keep`` are pruned.

Trust (docs/trust.md): ``*.pt`` files are pickles. Ours load with ``weights_only=True``;
DeepSpeed's ``load_checkpoint`` and ``zero_to_fp32`` unpickle theirs in full. So before either
reads a tag, :func:`verify` refuses one holding a file our save does not write, or a ``.pt``
file that does not load with ``weights_only=True`` and only the types of ``safe_globals()``
(tensors, containers, numpy's RNG state, DeepSpeed's ZeRO and loss-scaler records): a
planted pickle payload is refused with one line, before anything runs it.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist

from data_tools.errors import DataError

COMPLETE = "COMPLETE"
LATEST = "latest"
_TAG = re.compile(r"step_(\d+)")  # fullmatch: a plain name, no path, no newline
# The files a tag holds: ours (COMPLETE, config.yaml, client state) and DeepSpeed's (model
# states, ZeRO shards; ``bf16_`` for its bf16 optimizer).
_OUR_FILES = re.compile(r"COMPLETE|config\.yaml|client_rank\d+\.pt|mp_rank_\d+_model_states\.pt"
                        r"|(bf16_)?zero_pp_rank_\d+_mp_rank_\d+_(optim|model)_states\.pt")
_TRUST = "resume and export only checkpoints you trust (docs/trust.md)"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_order(tag: str) -> tuple[int, str]:
    return int(_TAG.fullmatch(tag).group(1)), tag


def complete_tags(root: str) -> list[str]:
    """Complete tags under ``root``, oldest step first."""
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root)
            if _TAG.fullmatch(t) and os.path.exists(os.path.join(root, t, COMPLETE))]
    return sorted(tags, key=_step_order)


def find_latest(root: str) -> str | None:
    """The newest complete tag: ``latest`` if it names a complete tag of ``root``, else a scan."""
    try:
        with open(os.path.join(root, LATEST)) as fh:
            tag = fh.read().strip()
        if _TAG.fullmatch(tag) and os.path.exists(os.path.join(root, tag, COMPLETE)):
            return tag
    except (OSError, UnicodeDecodeError):
        pass
    tags = complete_tags(root)
    return tags[-1] if tags else None


def safe_globals() -> list:
    """The non-tensor types our checkpoints pickle: numpy's RNG state (client state) and
    DeepSpeed's ZeRO stage, loss scalers and fragment addresses (its optimizer states)."""
    # deepspeed is imported here: it takes seconds, and the tag scans above run without it
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, wherever numpy keeps it
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct,
            ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def torch_load(path: str, **kwargs):
    """``torch.load`` with ``weights_only=True`` (on the CPU), :func:`safe_globals` allowed;
    a file that needs more is refused with a :class:`DataError` naming it."""
    allowed = safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any failure is a refusal
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = (f"it unpickles {found.group(1)}, which is not a tensor or a type megajepa "
               "writes" if found else f"it does not load as a tensor file ({first})")
        raise DataError(f"refused: {why}; {_TRUST}", file=path) from None


def verify(tag_dir: str) -> None:
    """Refuse (:class:`DataError`, one line) a checkpoint tag that holds a file our save does
    not write, or a ``.pt`` file that needs more than :func:`safe_globals` to unpickle. The
    check maps the tensors (``mmap``) and reads only the pickled structure."""
    for name in sorted(os.listdir(tag_dir)):
        path = os.path.join(tag_dir, name)
        if not _OUR_FILES.fullmatch(name) or not os.path.isfile(path):
            raise DataError(f"refused: not a file megajepa's checkpoint save writes; {_TRUST}",
                            file=path)
        if name.endswith(".pt"):
            torch_load(path, mmap=True)


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """``(root, tag)`` from a run dir, a checkpoints dir or a ``step_*`` dir."""
    path = os.path.abspath(path.rstrip("/"))
    if _TAG.fullmatch(os.path.basename(path)):
        if not os.path.exists(os.path.join(path, COMPLETE)):
            raise FileNotFoundError(f"checkpoint {path} is incomplete (no {COMPLETE} marker): "
                                    "its save was interrupted; use an earlier step")
        return os.path.dirname(path), os.path.basename(path)
    for root in (os.path.join(path, "checkpoints"), path):
        tag = find_latest(root)
        if tag:
            return root, tag
    raise FileNotFoundError(f"no complete checkpoint found under {path}")


def save(engine, root: str, step: int, client: dict, config_yaml: str, *, keep: int = 2,
         rank: int = 0) -> str:
    """Save a checkpoint of ``engine`` at ``step`` (collective: every rank must call it)."""
    tag = tag_for(step)
    path = os.path.join(root, tag)
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(path):  # a stale, incomplete save of the same step
            shutil.rmtree(path)
    _barrier()
    engine.save_checkpoint(root, tag=tag, save_latest=False)
    torch.save({**client, "rng": rng_state()}, os.path.join(path, f"client_rank{rank}.pt"))
    _barrier()
    if rank == 0:
        _atomic_write(os.path.join(path, "config.yaml"), config_yaml)
        _atomic_write(os.path.join(path, COMPLETE), json.dumps({"step": step}))
        _atomic_write(os.path.join(root, LATEST), tag)
        _prune(root, keep)
    _barrier()
    return path


def _prune(root: str, keep: int) -> None:
    tags = complete_tags(root)
    newest = tags[-1] if tags else None
    for t in os.listdir(root):
        full = os.path.join(root, t)
        if _TAG.fullmatch(t) and t != newest and not os.path.exists(os.path.join(full, COMPLETE)):
            shutil.rmtree(full, ignore_errors=True)  # leftovers of interrupted saves
    for t in tags[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, t), ignore_errors=True)


def load(engine, root: str, tag: str, *, rank: int = 0) -> dict:
    """Restore engine (weights, optimizer, scheduler) and return this rank's client state;
    the tag is :func:`verify`-ed first (DeepSpeed unpickles its files in full)."""
    path = os.path.join(root, tag)
    if not os.path.exists(os.path.join(path, COMPLETE)):
        raise FileNotFoundError(f"checkpoint {path} is incomplete (no {COMPLETE} marker)")
    verify(path)
    loaded, _ = engine.load_checkpoint(root, tag=tag, load_optimizer_states=True,
                                       load_lr_scheduler_states=True)
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
    client_path = os.path.join(path, f"client_rank{rank}.pt")
    if not os.path.exists(client_path):
        raise FileNotFoundError(f"{client_path} missing: was the checkpoint written with a "
                                "different number of ranks?")
    client = torch_load(client_path)
    set_rng_state(client.pop("rng"))
    return client

