"""Train, resume and export tiny checkpoints of several model families in one process (one
start-up for all; run directly or under the DeepSpeed launcher, every rank runs it):

    python tests/family_run.py [--no-resume] <out_root> <family_dir>... -- <pretrain.py flags>

For each ``<family_dir>`` (a Hugging Face folder; its name names the run): ``straight``, an
uninterrupted run of the flags; ``resumed``, the same run stopped at step 2 and resumed to its
end, then exported (``--no-resume``: only ``straight``, exported). The exported folder must
hold the trained weights (gathered under ZeRO-3); ``FAMILY_OK <name>`` is printed once that
holds. Each run starts from the same RNG state, as a fresh process would.
tests/test_families.py compares the two runs' losses and generates from the export.
"""
import contextlib
import os
import sys

import torch

from megajepa.config import load
from megajepa.launch import run as train  # the loop, then the export


def trained_state(lm) -> dict:
    """The full weights of ``lm``, gathered when ZeRO-3 partitions them (every rank calls)."""
    params = list(lm.parameters())
    gathered = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed
        gathered = deepspeed.zero.GatheredParameters(params)
    with gathered:
        return {k: v.detach().float().clone() for k, v in lm.state_dict().items()}


def check_export(result) -> None:
    from transformers import AutoModelForCausalLM

    trained = trained_state(result["module"].lm)
    if "export" not in result:  # the export is rank 0's
        return
    hf = AutoModelForCausalLM.from_pretrained(result["export"], dtype=torch.float32)
    exported = hf.state_dict()
    missing = sorted(set(trained) - set(exported))
    assert not missing, f"not exported: {missing}"
    for k, v in trained.items():
        torch.testing.assert_close(exported[k], v, rtol=0, atol=1e-6, msg=f"{k} differs from the export")


def main(argv) -> int:
    argv = [a for a in argv if not a.startswith("--local_rank")]  # the DeepSpeed launcher's
    resume = "--no-resume" not in argv
    argv = [a for a in argv if a != "--no-resume"]
    sep = argv.index("--")
    out_root, dirs, flags = argv[0], argv[1:sep], argv[sep + 1:]
    for d in dirs:
        name = os.path.basename(d.rstrip("/"))

        def run(sub, *extra):
            torch.manual_seed(0)  # what a fresh process starts from (the resize draws new rows)
            return train(load(flags + ["--init-from", d, "--run-dir", os.path.join(out_root, name, sub),
                                       *extra]))

        if not resume:
            check_export(run("straight", "--train.export", "true"))
        else:
            run("straight")
            run("resumed", "--train.stop_at", "2", "--train.save_every", "2")
            check_export(run("resumed", "--resume", "auto", "--train.export", "true"))
        print(f"FAMILY_OK {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
