"""Run the authors' ``finetune.py`` (github galilai-group/llm-jepa) unchanged, as one process
on one GPU.

Their ``--pretrain`` path calls ``torch.distributed.get_rank()``, which needs a process group,
but the script creates one only when ``WORLD_SIZE > 1`` (their runs use ``torchrun`` on 8
GPUs). This launcher creates a world of one and runs the script as ``__main__``:

    python scripts/bench/anchor_launch.py third_party/llm-jepa/finetune.py --train_file ... --pretrain

and prints ``anchor_wall_s=<seconds>`` for the whole run (model set-up, tokenization,
training, saving); the Trainer prints its own ``train_runtime`` for the training loop.

``--cpu-check`` (tests, no GPU) stands in for what the script asks of CUDA: the rank printed
through ``torch.cuda.current_device()``, the ``.to("cuda:<rank>")`` of the random-init model
and bf16 support in ``TrainingArguments`` (bf16 runs on the CPU), so that its argument
parsing, data preparation and Trainer run on a CPU at a tiny size.
"""
from __future__ import annotations

import os
import runpy
import socket
import sys
import time


def _cpu_stand_ins(torch) -> None:
    torch.cuda.current_device = lambda: 0
    move = torch.nn.Module.to

    def to(self, *args, **kwargs):
        cpu = torch.device("cpu")
        args = tuple(cpu if isinstance(a, torch.device) and a.type == "cuda" else a for a in args)
        if isinstance(kwargs.get("device"), torch.device) and kwargs["device"].type == "cuda":
            kwargs["device"] = cpu
        return move(self, *args, **kwargs)

    torch.nn.Module.to = to
    import transformers.training_args as targs

    targs.is_torch_bf16_gpu_available = lambda: True  # its TrainingArguments ask for bf16


def main(argv: list[str]) -> int:
    cpu_check = "--cpu-check" in argv
    argv = [a for a in argv if a != "--cpu-check"]
    if not argv or not os.path.isfile(argv[0]):
        print(f"error: first argument must be the authors' finetune.py, got {argv[:1]}",
              file=sys.stderr)
        return 2
    import torch
    import torch.distributed as dist

    if cpu_check:
        _cpu_stand_ins(torch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    backend = "nccl" if torch.cuda.is_available() and not cpu_check else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    t0 = time.time()
    sys.argv = argv
    # their folder first, as `python finetune.py` has it, and not this one: the benchmarks
    # beside this file (trainer.py, stp.py, ...) must not shadow what their code imports
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [os.path.dirname(os.path.abspath(argv[0]))] + [
        p for p in sys.path if os.path.realpath(p or ".") != here]
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        print(f"anchor_wall_s={time.time() - t0:.1f}", flush=True)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
