"""Run ``pretrain.py`` with one fault patched in, for the crash tests (the production code has
no fault hooks; this script replaces a function before ``main`` runs)::

    python tests/fault_run.py nan_loss:N  <pretrain flags>   training micro-batch N returns a NaN loss
    python tests/fault_run.py kill_save:S <pretrain flags>   the process dies (exit 137) inside the
                                                            save of step S: every shard and client
                                                            file written, COMPLETE and latest not yet
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megajepa import checkpoint, objective  # noqa: E402
from megajepa.launch import main  # noqa: E402


def nan_loss(n: int) -> None:
    real, calls = objective.forward, [0]

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():  # training micro-batches, not the held-out eval
            calls[0] += 1
            if calls[0] == n:
                out.loss = out.loss * float("nan")
        return out

    objective.forward = forward


def kill_save(step: int) -> None:
    # checkpoint.save writes config.yaml, COMPLETE and latest with _atomic_write, after the
    # barrier that follows every rank's shards: dying at the first of them is a power cut
    # in the middle of the save.
    real, tag = checkpoint._atomic_write, checkpoint.tag_for(step)

    def write(path, text):
        if os.path.basename(os.path.dirname(path)) == tag:
            os._exit(137)
        real(path, text)

    checkpoint._atomic_write = write


if __name__ == "__main__":
    args = sys.argv[1:]
    spec = next(a for a in args if not a.startswith("-"))  # the deepspeed launcher puts --local_rank first
    args.remove(spec)
    name, _, arg = spec.partition(":")
    {"nan_loss": nan_loss, "kill_save": kill_save}[name](int(arg))
    sys.exit(main(args))
