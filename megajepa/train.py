"""The training loop over the DeepSpeed engine (no HF Trainer).

    setup: config -> data (store, tokenizer) -> model (under zero.Init for ZeRO-3) -> engine
    for step:  micro-batches -> global counts -> forward -> backward -> step -> log -> save/eval
    end:       checkpoint -> export (HF folder) -> held-out generation eval

Losses are normalized by global counts: DeepSpeed divides each micro-batch loss by the
accumulation steps and averages gradients over ranks, so each micro-batch's sums are divided
by ``global_count / (grad_accum * world_size)``; the resulting gradient is the global sum
over label tokens (JEPA pairs) divided by their global count, however the batch is split.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

from megajepa import checkpoint, config as config_mod, objective
from megajepa.ds_config import offloads_optimizer, resolve as resolve_ds, zero_stage
from megajepa.metrics import FlopCounter, MetricsLogger, attended_pairs, device_peak_tflops, peak_memory_gb

log = logging.getLogger("megajepa")


class NonFiniteLoss(RuntimeError):
    pass


class JepaModule(nn.Module):
    """Owns the causal LM and computes the objective inside ``forward``, so DeepSpeed sees
    the LM-head weight used by the fused loss head (registered as an external parameter
    under ZeRO-3, where it would otherwise stay partitioned outside ``lm_head.forward``)."""

    def __init__(self, lm, jepa: config_mod.JepaConfig):
        super().__init__()
        self.lm = lm
        self.jepa = jepa
        weight = lm.get_output_embeddings().weight
        if hasattr(weight, "ds_id"):
            import deepspeed
            deepspeed.zero.register_external_parameter(self, weight)

    def forward(self, batch, lm_denominator=None, jepa_denominator=None):
        j = self.jepa
        out = objective.forward(
            self.lm, batch, lbd=j.lbd, gamma=j.gamma, distance=j.distance, mode=j.mode,
            stopgrad_target=j.stopgrad_target, temperature=j.temperature,
            lm_denominator=lm_denominator, jepa_denominator=jepa_denominator,
            ce_chunk_size=j.ce_chunk_size, kernels=j.kernels)
        # A tuple of tensors: DeepSpeed hooks module outputs it can traverse.
        return out.loss, out.lm_loss.detach(), out.jepa_loss.detach(), out.cosine


# ------------------------------------------------------------------------ setup helpers

def setup_distributed():
    import deepspeed

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        if "OMP_NUM_THREADS" not in os.environ:
            # One process per rank shares the cores; oversubscribed threads spin (measured:
            # 100x slower steps on a busy 2-core machine with 2 threads per process).
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if "RANK" not in os.environ:  # plain `python pretrain.py`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return dist.get_rank(), dist.get_world_size(), device


def _free_port() -> int:
    import socket
    # Bind every address (as the rendezvous store will), not only loopback.
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def lr_lambda(cfg: config_mod.Config):
    o, total = cfg.optim, cfg.train.steps
    warm = config_mod.warmup_steps(cfg)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        progress = (step - warm) / max(1, total - warm)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * cos

    return f


def make_optimizer(cfg, params, ds_cfg, device):
    o = cfg.optim
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    if offloads_optimizer(ds_cfg):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    return torch.optim.AdamW(params, fused=device.type == "cuda", **kw)


def param_groups(model, weight_decay):
    """No weight decay on norms and biases (1-D parameters)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if getattr(p, "ds_shape", p.shape).__len__() < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def all_reduce(values, device, op=None):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


class StopFlag:
    """SIGTERM/SIGINT: finish the current step, save, exit 0."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.signal = signum


# ------------------------------------------------------------------------------ main

def train(cfg: config_mod.Config) -> dict:
    from megajepa import data as data_mod
    from megajepa.loader import PackedLoader
    from megajepa.model import build_model, resize_for_tokenizer

    rank, world, device = setup_distributed()
    is_main = rank == 0
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    run_dir = os.path.abspath(cfg.train.run_dir)
    ckpt_root = os.path.join(run_dir, "checkpoints")
    load_root, resume_tag = ckpt_root, None  # checkpoints are always *saved* to ckpt_root
    if cfg.train.resume == "auto":
        resume_tag = checkpoint.find_latest(ckpt_root)
    elif cfg.train.resume:
        load_root, resume_tag = checkpoint.resolve_checkpoint(cfg.train.resume)
    fresh_here = not cfg.train.resume or (
        cfg.train.resume != "auto" and os.path.abspath(load_root) != ckpt_root)
    if is_main and fresh_here and os.path.isdir(ckpt_root):
        # A fresh start never mixes with an old run's checkpoints: set them aside, keep them.
        aside = f"{ckpt_root}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(ckpt_root, aside)
        log.warning("starting fresh in %s: its previous checkpoints moved to %s "
                    "(use --resume auto to continue a run instead)", run_dir, aside)

    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    ds_cfg = resolve_ds(cfg, world, bf16=bf16, skip_nonfinite=cfg.train.on_nonfinite == "skip")
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        print("resolved config:\n" + cfg.to_yaml(), flush=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
            fh.write(cfg.to_yaml())

    data = data_mod.prepare(cfg, run_dir, rank=rank)
    tok = data.tokenizer
    data_mod.check_compatible(cfg, data)

    loader = PackedLoader(
        data.train_store, seq_len=cfg.data.seq_len, micro_batch_rows=cfg.data.micro_batch_rows,
        k=cfg.jepa.k, pred_ids=data.pred_ids, pad_id=data.pad_id, seed=cfg.train.seed,
        rank=rank, world_size=world, jepa_ratio=cfg.jepa.jepa_ratio if cfg.jepa.lbd else 0.0,
        jepa_pairs=cfg.jepa.jepa_pairs, reverse=cfg.jepa.reverse, lm_on_all=cfg.data.lm_on_all,
        overflow=cfg.data.overflow, window=cfg.data.window)
    if loader.steps_per_epoch < 1:
        raise ValueError(
            f"the training data fills {loader.epoch_stats['rows']} rows of {cfg.data.seq_len} tokens: "
            f"fewer than one step needs ({cfg.data.micro_batch_rows} rows x {world} ranks); "
            "add data or lower data.micro_batch_rows")

    attn = cfg.model.attn if cfg.model.attn != "auto" else (
        "flex_attention" if device.type == "cuda" else "sdpa")
    init_ctx = None
    if zero_stage(ds_cfg) == 3:
        import deepspeed
        init_ctx = deepspeed.zero.Init(config_dict_or_path=ds_cfg)
    model = build_model(preset=None if cfg.model.init_from else cfg.model.preset,
                        vocab_size=len(tok), init_from=cfg.model.init_from, seed=cfg.train.seed,
                        attn_implementation=attn, init_context=init_ctx)
    if cfg.model.init_from:
        resize_for_tokenizer(model, tok)
    module = JepaModule(model, cfg.jepa)
    flops = FlopCounter(model.config)
    optimizer = make_optimizer(cfg, param_groups(module, cfg.optim.weight_decay), ds_cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    import deepspeed
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)

    start = 0
    if resume_tag:
        client = checkpoint.load(engine, load_root, resume_tag, rank=rank)
        loader.load_state_dict(client["loader"])
        start = int(client["step"])
        if is_main:
            log.info("resumed from %s at step %d", os.path.join(load_root, resume_tag), start)
    elif cfg.train.resume == "auto" and is_main:
        log.info("resume=auto: no complete checkpoint in %s, starting fresh", ckpt_root)


    logger = MetricsLogger(run_dir, enabled=is_main, resume_step=start)
    logger.text("config", cfg.to_yaml())
    peak = device_peak_tflops(cfg.train.peak_tflops)
    stop = StopFlag()
    gas = cfg.optim.grad_accum
    end = cfg.train.steps if not cfg.train.stop_at else min(cfg.train.steps, cfg.train.stop_at)
    bar = _progress(start, cfg.train.steps, is_main)
    step, last = start, {}
    exit_reason = "done"

    def save():
        client = {"step": step, "loader": loader.state_dict(), "config": cfg.to_dict()}
        checkpoint.save(engine, ckpt_root, step, client, cfg.to_yaml(),
                        keep=cfg.train.keep_checkpoints, rank=rank)
        if is_main:
            log.info("saved checkpoint %s", os.path.join(ckpt_root, checkpoint.tag_for(step)))

    while step < end:
        t0 = time.time()
        batches = [next(loader) for _ in range(gas)]
        local = [sum(b.num_label_tokens for b in batches), sum(b.num_pairs for b in batches)]
        n_lab, n_pairs = all_reduce(local, device)
        scale = gas * world
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        for b in batches:
            loss, lm_loss, jepa_loss, cos = engine(b, lm_denominator=max(n_lab, 1) / scale,
                                                   jepa_denominator=max(n_pairs, 1) / scale)
            if os.environ.get("MEGAJEPA_FAULT") == f"nan_loss:{step + 1}":  # fault injection (tests)
                loss = loss * float("nan")
            bad = all_reduce([0.0 if torch.isfinite(loss) else 1.0], device, dist.ReduceOp.MAX)[0]
            if bad:
                msg = f"non-finite loss at step {step + 1} (loss={loss.item()})"
                if cfg.train.on_nonfinite == "stop":
                    raise NonFiniteLoss(msg + "; stopping (train.on_nonfinite=stop). The last "
                                        f"good checkpoint is in {ckpt_root}")
                log.warning(msg + "; the update will be skipped (train.on_nonfinite=skip)")
            engine.backward(loss)
            engine.step()
            sums += torch.tensor([loss.item(), lm_loss.item(), jepa_loss.item(),
                                  cos.item() * b.num_pairs], dtype=torch.float64, device=device)
        step += 1
        last = _step_scalars(batches, sums, n_lab, n_pairs, scale, time.time() - t0, engine,
                             scheduler, loader, flops, peak, world, device)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", cos=f"{last['cosine']:.3f}")
        if step % cfg.train.log_every == 0 or step == end:
            logger.log(step, last)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and data.eval_store:
            held = data_mod.held_out_metrics(engine, cfg, data, rank, world, device)
            if is_main:
                logger.log(step, held["scalars"])
                if logger.writer is not None and held.get("diagnostics"):
                    from megajepa.analyze import log_diagnostics
                    log_diagnostics(logger.writer, step, held["diagnostics"])
        stop_now = all_reduce([1.0 if stop.signal else 0.0], device, dist.ReduceOp.MAX)[0]
        if step % cfg.train.save_every == 0 or step == end or stop_now:
            save()
        if stop_now:
            exit_reason = f"signal {stop.signal or 'on another rank'}"
            break
    if bar is not None:
        bar.close()
    if step == start and start > 0 and is_main:
        log.info("checkpoint is already at step %d of %d: nothing to train", start, end)
    logger.close()
    result = {"step": step, "exit": exit_reason, "run_dir": run_dir, "module": engine.module,
              **last}
    if exit_reason == "done" and step >= cfg.train.steps and not cfg.train.stop_at:
        result.update(_finish(cfg, ckpt_root, data, step, rank, run_dir))
    dist.barrier()
    return result


def _step_scalars(batches, sums, n_lab, n_pairs, scale, dt, engine, scheduler, loader, flops,
                  peak, world, device) -> dict:
    """The step's logged metrics, reduced over ranks (collective)."""
    # global loss = sum over micro-batches and ranks of (sum / global count)
    sums[:3] /= scale
    dist.all_reduce(sums)
    tokens = sum(b.stats["real_tokens"] for b in batches)
    examples = sum(b.stats["examples"] for b in batches)
    pairs = sum(attended_pairs(b.doc_ids, b.roles) for b in batches)
    capacity = sum(b.stats["capacity"] for b in batches)
    tot_tokens, tot_examples, tot_pairs, tot_capacity = all_reduce(
        [tokens, examples, pairs, capacity], device)
    tflops = flops.step_flops(tot_tokens, n_lab, tot_pairs) / dt / 1e12 / world
    return {
        "loss": sums[0].item(), "lm_loss": sums[1].item(), "jepa_loss": sums[2].item(),
        "cosine": (sums[3] / max(n_pairs, 1)).item(), "lr": scheduler.get_last_lr()[0],
        "grad_norm": _grad_norm(engine), "tokens_per_s": tot_tokens / dt,
        "samples_per_s": tot_examples / dt, "packing_efficiency": tot_tokens / tot_capacity,
        "step_time_s": dt, "tflops": tflops, "mfu": tflops / peak if peak else float("nan"),
        "peak_memory_gb": peak_memory_gb(), "skipped_steps": engine.skipped_steps,
        "epoch": loader.epoch,
    }


def _grad_norm(engine) -> float:
    g = engine.get_global_grad_norm()
    if g is None:
        return float("nan")
    return float(g.item() if torch.is_tensor(g) else g)


def _progress(start, total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                file=sys.stdout, mininterval=1.0)


def _finish(cfg, ckpt_root, data, step, rank, run_dir) -> dict:
    """Rank 0: export the final checkpoint and run the held-out generation eval."""
    out = {}
    dist.barrier()
    if rank != 0:
        return out
    if cfg.train.export:
        from megajepa.export import export
        export_dir = os.path.join(run_dir, "export")
        export(os.path.join(ckpt_root, checkpoint.tag_for(step)), export_dir, overwrite=True)
        out["export"] = export_dir
        print(f"exported Hugging Face model to {export_dir}", flush=True)
        if cfg.train.final_eval and data.eval_records:
            from megajepa.data import final_eval
            out["final_eval"] = final_eval(cfg, export_dir, data, run_dir)
    print(f"logs: {run_dir}/metrics.jsonl and {run_dir}/tb (tensorboard --logdir {run_dir}/tb); "
          f"checkpoints: {ckpt_root}", flush=True)
    return out


def main(argv=None) -> int:
    try:
        cfg = config_mod.load(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return 0 if result else 1
