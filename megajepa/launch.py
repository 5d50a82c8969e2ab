"""What ``pretrain.py`` runs: the training loop (:func:`megajepa.train.train`), then, when
the run reached its last step, the Hugging Face export and the final generation eval on the
held-out chat records (rank 0); one ``error:`` line and the exit code for the whole launch.

It stands above both the loop and export/eval, which do not import each other::

    launch  ->  train (the loop: heldout, collapse, loader, objective, ...)
            ->  export, eval (a finished checkpoint -> a Hugging Face folder -> metrics)
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import torch.distributed as dist

from megajepa import config as config_mod, console
from megajepa.eval import evaluate
from megajepa.eval.run import load_model
from megajepa.export import export
from megajepa.train import NonFiniteLoss, train


def run(cfg: config_mod.Config) -> dict:
    """Train; when the run reached its last step, export and evaluate it (rank 0, per
    ``train.export`` and ``train.final_eval``). The loop's result, plus ``export`` and
    ``final_eval`` where they ran (collective: every rank returns after rank 0 is done)."""
    result = train(cfg)
    if result["done"] and dist.get_rank() == 0:
        result.update(export_and_eval(cfg, result))
        console.say(f"logs: {result['run_dir']}/metrics.jsonl and {result['run_dir']}/tb (tensorboard "
                    f"--logdir {result['run_dir']}/tb); checkpoints: {result['ckpt_root']}")
    dist.barrier()
    return result


def export_and_eval(cfg: config_mod.Config, result: dict) -> dict:
    """The finished checkpoint exported to ``<run_dir>/export``, then greedy generation on
    ``data.eval``'s records, written to ``<run_dir>/final_eval.json``."""
    out = {}
    if not cfg.train.export:
        return out
    export_dir = os.path.join(result["run_dir"], "export")
    export(result["checkpoint"], export_dir, overwrite=True)
    out["export"] = export_dir
    console.say(f"exported Hugging Face model to {export_dir}")
    data = result["data"]
    if cfg.train.final_eval and data.eval_records:
        out["final_eval"] = final_eval(cfg, export_dir, data, result["run_dir"])
    elif cfg.train.final_eval:
        console.say("final eval skipped: no held-out data; pass --data.eval <chat JSONL> to evaluate "
                    "the export (or --train.final_eval false to drop this note)")
    return out


def final_eval(cfg: config_mod.Config, export_dir: str, data, run_dir: str) -> dict:
    """Greedy generation with the exported model on the held-out chat records."""
    model, tok = load_model(export_dir)
    task = cfg.train.eval_task
    metrics = evaluate(model, tok, data.eval_records, task, template=cfg.data.template,
                       max_new_tokens=cfg.train.max_new_tokens,
                       system_in_plain=data.system_in_plain)
    with open(os.path.join(run_dir, "final_eval.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)
    shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    console.say(f"final held-out eval ({metrics.get('n')} pairs, {task}): {shown}")
    return metrics


def _error(e: BaseException, code: int) -> int:
    """One ``error:`` line for the whole launch, from rank 0: the errors main catches are the
    same on every rank (the config, data errors rank 0 shares, a non-finite loss the ranks
    agreed on); every rank exits with ``code``."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {e}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    try:
        cfg = config_mod.load(argv)
    except ValueError as e:
        return _error(e, 2)
    try:
        result = run(cfg)
    except NonFiniteLoss as e:
        return _error(e, 3)
    except (ValueError, FileNotFoundError) as e:
        return _error(e, 2)
    finally:
        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return 0 if result else 1
