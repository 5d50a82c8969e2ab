"""The training loop over the DeepSpeed engine (no HF Trainer), read top to bottom in
:func:`train`::

    run = setup(cfg)   config -> data (store, tokenizer) -> model (zero.Init for ZeRO-3) -> engine -> resume
    for step:          micro-batches -> forward -> backward -> step -> [read: log, checks] -> eval/save
    finish(...)        close the logs; the result says whether the run reached its last step

What follows a finished run (the Hugging Face export, the final generation eval) and the
command line are :mod:`megajepa.launch`'s, a floor above: the loop imports no export or eval.

Losses are normalized by global counts: DeepSpeed divides each micro-batch loss by the
accumulation steps and averages gradients over ranks, so each micro-batch's sums are divided
by ``global_count / (grad_accum * world_size)``; the resulting gradient is the global sum
over label tokens (JEPA pairs) divided by their global count, however the batch is split.

Host reads. Between *read points* the loop never waits for the device: the loader counts
tokens, labels, pairs and attended pairs on the host where it builds each batch; a step's
global label/pair counts are all-reduced as a device tensor and passed to the objective as
denominators; losses, cosine and a non-finite flag are summed on the device (:class:`Tally`).
A read point (every ``train.log_every`` steps, and before every save, held-out eval and the
end) all-reduces one tensor and reads it once. A single process also reads when a signal
arrives; with several ranks the signal is agreed on at the next read point.

Non-finite losses (reported with the step, never silently trained on):

* ``skip``: the ZeRO optimizer finds the non-finite gradient and drops the update before it
  is applied. That decision is DeepSpeed's own host read of its overflow flag, once per
  optimizer step (the host must know before it updates the weights); the loop adds none.
* ``stop``: needs no read per step. A non-finite step may reach the weights in memory, but
  every save, eval and export comes after a read point, which raises :class:`NonFiniteLoss`
  (exit 3) naming the first non-finite step: nothing it touched is written, evaluated or
  exported, and the last good checkpoint stays for ``--resume``. The price is at most
  ``log_every - 1`` wasted steps.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass

import psutil
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from tqdm import tqdm

from megajepa import (checkpoint, config as config_mod, console, data as data_mod, objective, pretrained,
                      schedule, stp)
from megajepa.collapse import log_diagnostics
from megajepa.ds_config import offloads_optimizer, resolve as resolve_ds, zero_stage
from megajepa.heldout import held_out_metrics
from megajepa.layout import to_device
from megajepa.loader import PackedLoader, budget_steps
from megajepa.masking import window_per_layer
from megajepa.model import (apply_lora, build_model, lora_token_ids, optimize, register_lora_zero3,
                            resize_for_tokenizer)
from megajepa.metrics import FlopCounter, MetricsLogger, device_peak_tflops, peak_memory_gb
from megajepa.sigreg import ProjectionHead, jepa_sigreg

log = logging.getLogger("megajepa")


class NonFiniteLoss(RuntimeError):
    pass


class JepaModule(nn.Module):
    """Owns the causal LM and computes the objective inside ``forward``, so DeepSpeed sees
    the LM-head weight used by the fused loss head (registered as an external parameter
    under ZeRO-3, where it would otherwise stay partitioned outside ``lm_head.forward``)."""

    def __init__(self, lm, jepa: config_mod.JepaConfig, stp_predictor: nn.Module | None = None,
                 sigreg_head: nn.Module | None = None, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.jepa = jepa
        self.stp_predictor = stp_predictor  # STP's linear predictor: checkpointed, not exported
        self.sigreg_head = sigreg_head      # SIGReg's projection (jepa.sigreg_head): likewise
        self.seed = seed
        self.register_head()

    def register_head(self):
        """Under ZeRO-3, have DeepSpeed gather the LM head's weight (and bias) for this module's
        forward. Called again once the engine exists: a head transformers resized after
        ``zero.Init`` is partitioned only by ``deepspeed.initialize``."""
        for p in self.lm.get_output_embeddings().parameters():
            if hasattr(p, "ds_id"):
                import deepspeed  # loaded after console.prepare(): it prints at import
                deepspeed.zero.register_external_parameter(self, p)

    def forward(self, batch, lm_denominator=None, jepa_denominator=None, micro_step=None,
                return_hidden=False):
        """``(loss, lm_loss, jepa_loss, cosine, sigreg)``, and the last hidden states
        ``[rows, seq_len, dim]`` after them with ``return_hidden`` (the held-out read-outs).
        With ``jepa.sigreg > 0`` and a ``micro_step`` (training; it seeds the directions) the
        loss adds ``sigreg * SIGReg`` of the read-outs: a collective, so every rank calls it at
        every micro-step, also with no pairs of its own; held-out forwards (no ``micro_step``)
        leave it out."""
        j = self.jepa
        regularize = j.sigreg > 0 and micro_step is not None
        out = objective.forward(
            self.lm, batch, lbd=j.lbd, gamma=j.gamma, distance=j.distance, mode=j.mode,
            stopgrad_target=j.stopgrad_target, temperature=j.temperature,
            lm_denominator=lm_denominator, jepa_denominator=jepa_denominator,
            ce_chunk_size=j.ce_chunk_size, kernels=j.kernels, objective=j.objective,
            stp_predictor=self.stp_predictor, return_hidden=regularize or return_hidden)
        loss, reg = out.loss, torch.zeros((), device=out.loss.device)
        if regularize:
            flat = out.hidden.reshape(-1, out.hidden.shape[-1])
            reg = jepa_sigreg(flat, to_device(batch.pred_index, flat.device),
                              to_device(batch.target_index, flat.device), step=micro_step, on=j.sigreg_on,
                              head=self.sigreg_head, num_slices=j.sigreg_slices,
                              num_points=j.sigreg_points, seed=self.seed)
            loss = loss + j.sigreg * reg
        # A tuple of tensors: DeepSpeed hooks module outputs it can traverse.
        outputs = (loss, out.lm_loss.detach(), out.jepa_loss.detach(), out.cosine, reg.detach())
        return outputs + (out.hidden,) if return_hidden else outputs


@dataclass
class Run:
    """What :func:`setup` builds and the loop uses."""

    cfg: config_mod.Config
    rank: int
    world: int
    device: torch.device
    run_dir: str
    ckpt_root: str            # checkpoints are always saved here (even when resumed from elsewhere)
    data: object              # megajepa.data.RunData
    loader: object            # megajepa.loader.PackedLoader
    engine: object            # deepspeed.DeepSpeedEngine around a JepaModule
    scheduler: object
    flops: FlopCounter
    peak_tflops: float
    logger: MetricsLogger
    start: int                # first step to run (the resumed step, or 0)
    end: int                  # total, or train.stop_at when set
    stp: object = None        # megajepa.stp.StpSpec of a jepa.objective=stp run, else None
    total: int = 0            # the run's optimizer steps: train.steps, or what train.epochs derives

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------------ the loop

def train(cfg: config_mod.Config) -> dict:
    run = setup(cfg)
    engine, gas = run.engine, cfg.optim.grad_accum
    tally = Tally(run)
    stop = StopFlag(os.path.join(run.run_dir, STOP_FILE) if run.is_main else None)
    bar = _progress(run)
    step, last, exit_reason = run.start, {}, "done"
    while step < run.end:
        batches = [next_batch(run) for _ in range(gas)]
        lm_den, jepa_den = tally.begin_step(batches)  # global counts, left on the device
        for i, b in enumerate(batches):
            loss, lm_loss, jepa_loss, cos, reg = engine(b, lm_denominator=lm_den, jepa_denominator=jepa_den,
                                                        micro_step=step * gas + i)
            tally.add(step + 1, loss, lm_loss, jepa_loss, cos, _readouts(b), reg)
            engine.backward(loss)
            engine.step()
        step += 1
        if bar is not None:
            bar.update(1)
        save_due = step % cfg.train.save_every == 0 or step == run.end
        eval_due = bool(cfg.train.eval_every and step % cfg.train.eval_every == 0 and run.data.eval_store)
        if not (step % cfg.train.log_every == 0 or save_due or eval_due
                or (run.world == 1 and stop.signal)):
            continue
        last, flags = tally.read(step, stop.requested())  # the one host read since the last one
        check_finite(run, step, flags, last)
        run.logger.log(step, last)
        if bar is not None:
            bar.set_postfix(loss=f"{last['loss']:.3f}", cos=f"{last['cosine']:.3f}")
        if eval_due:
            held_out_eval(run, step)
        if save_due or flags["signal"]:
            save(run, step)
        if flags["signal"]:  # a stop request on some rank, agreed by the read's all-reduce
            exit_reason = stop.consume()
            break
        tally.restart(step)  # throughput windows exclude eval and save time
    if bar is not None:
        bar.close()
    return finish(run, step, exit_reason, last)


# ------------------------------------------------------------------------------ set-up

def setup(cfg: config_mod.Config) -> Run:
    """config -> data -> model -> engine -> resume. Bad input (a missing path, data that does
    not fit the config) fails before anything is written: a first start leaves no run dir."""
    data_mod.check_paths(cfg)
    console.prepare()
    rank, world, device = setup_distributed()
    console.setup_logging(rank)
    run_dir = os.path.abspath(cfg.train.run_dir)
    ckpt_root = os.path.join(run_dir, "checkpoints")
    load_root, resume_tag = _resume_target(cfg, ckpt_root)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    ds_cfg = resolve_ds(cfg, world, bf16=bf16, skip_nonfinite=cfg.train.on_nonfinite == "skip")
    first_start = not os.path.exists(run_dir)
    try:
        data = data_mod.prepare(cfg, run_dir, rank=rank)
        data_mod.check_compatible(cfg, data)
        windows = window_per_layer(pretrained.config_of(data.model_dir)) if data.model_dir else None
        loader = make_loader(cfg, data, rank, world, fixed_rows=attention(cfg, device) == "flex_attention",
                             attention_windows=windows)
        total = budget_steps(loader, steps=cfg.train.steps, epochs=cfg.train.epochs,
                             grad_accum=cfg.optim.grad_accum)
    except BaseException:
        if rank == 0 and first_start:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        remove_stale_stop(run_dir)
        _set_aside_old_checkpoints(cfg, load_root, ckpt_root)
        with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
            fh.write(cfg.to_yaml())
        log_path = console.attach_run_log(run_dir)
        console.say(f"run dir {run_dir}: config {os.path.join(run_dir, 'config.yaml')}, log {log_path}, "
                    f"metrics: tensorboard --logdir {os.path.join(run_dir, 'tb')}")
        console.say(data.description)
    engine, scheduler = make_engine(cfg, data.tokenizer, ds_cfg, device, total, data.model_dir)

    start = 0
    if resume_tag:
        client = checkpoint.load(engine, load_root, resume_tag, rank=rank)
        loader.load_state_dict(client["loader"])
        start = int(client["step"])
        console.say(f"resumed from {os.path.join(load_root, resume_tag)} at step {start}")
    elif cfg.train.resume == "auto":
        console.say(f"resume auto: no complete checkpoint in {ckpt_root}, starting fresh")

    logger = MetricsLogger(run_dir, enabled=rank == 0, resume_step=start)
    logger.text("config", cfg.to_yaml())
    end = min(total, cfg.train.stop_at) if cfg.train.stop_at else total
    if cfg.train.epochs and rank == 0:
        console.say(f"train.epochs {cfg.train.epochs}: {total} optimizer steps "
                    f"({loader.epoch_stats['examples_per_step']} examples per step)")
    return Run(cfg, rank, world, device, run_dir, ckpt_root, data, loader, engine, scheduler,
               FlopCounter(engine.module.lm.config), device_peak_tflops(cfg.train.peak_tflops),
               logger, start, end,
               stp=config_mod.stp_spec(cfg.jepa) if cfg.jepa.objective == "stp" else None,
               total=total)


def _resume_target(cfg, ckpt_root: str):
    """``(load_root, tag)`` to resume from (tag None: fresh); reads only, and refuses a tag
    that holds what our save does not write before anything is written."""
    root, tag = ckpt_root, None
    if cfg.train.resume == "auto":
        tag = checkpoint.find_latest(ckpt_root)
    elif cfg.train.resume:
        root, tag = checkpoint.resolve_checkpoint(cfg.train.resume)
    if tag:
        checkpoint.verify(os.path.join(root, tag))
        _check_same_module(cfg, os.path.join(root, tag))
    return root, tag


def _module_settings(cfg) -> dict:
    """The settings that decide which parameters the trained module has."""
    m, j = cfg.model, cfg.jepa
    out = {"model.lora_rank": m.lora_rank, "jepa.sigreg_head": j.sigreg_head,
           "jepa.stp_predictor": j.stp_predictor and j.objective == "stp"}
    if m.init_from is None:
        out["model.preset"] = m.preset
    if m.lora_rank:
        out["model.lora_targets"] = m.lora_targets
    return out


def _check_same_module(cfg, path: str) -> None:
    """A checkpoint resumes only into a module with the same parameters: one line naming
    what differs, before DeepSpeed fails inside its state dict."""
    try:
        saved = config_mod.read_saved(path)
    except (OSError, ValueError, yaml.YAMLError):
        return  # no readable config beside the weights: DeepSpeed's own load decides
    there, here = _module_settings(saved), _module_settings(cfg)
    diff = [f"{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in sorted(set(there) | set(here))
            if there.get(k) != here.get(k)]
    if diff:
        raise ValueError(f"train.resume: the checkpoint {path} holds another module ({'; '.join(diff)}): "
                         "resume with the settings it was trained with, or start a new run from its "
                         "export with --init-from")


def _set_aside_old_checkpoints(cfg, load_root: str, ckpt_root: str) -> None:
    """A fresh start never mixes with an old run's checkpoints: they are kept, renamed."""
    fresh_here = not cfg.train.resume or (
        cfg.train.resume != "auto" and os.path.abspath(load_root) != ckpt_root)
    if fresh_here and os.path.isdir(ckpt_root):
        aside = f"{ckpt_root}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(ckpt_root, aside)
        log.warning("starting fresh in %s: its previous checkpoints moved to %s "
                    "(use --resume auto to continue a run instead)", os.path.dirname(ckpt_root), aside)


def make_loader(cfg, data, rank: int, world: int, fixed_rows: bool = False, attention_windows=None):
    """The training loader: rows of ``data.micro_batch_rows``, or ``data.micro_batch_examples``
    whole examples per micro-batch (``fixed_rows``: padded to the epoch's most rows, one
    shape for a compiled FlexAttention model; ``attention_windows``: each layer's sliding
    window, for the FLOP count)."""
    d = cfg.data
    loader = PackedLoader(
        data.train_store, seq_len=d.seq_len, micro_batch_rows=d.micro_batch_rows,
        k=cfg.jepa.k, pred_ids=data.pred_ids, pad_id=data.pad_id, seed=cfg.train.seed,
        rank=rank, world_size=world,
        jepa_ratio=cfg.jepa.jepa_ratio if cfg.jepa.lbd and cfg.jepa.objective == "views" else 0.0,
        jepa_pairs=cfg.jepa.jepa_pairs, reverse=cfg.jepa.reverse, lm_on_all=d.lm_on_all,
        overflow=d.overflow, window=d.window, read_at=cfg.jepa.read_at,
        micro_batch_examples=d.micro_batch_examples, fixed_rows=fixed_rows, balance_rows=d.balance_rows,
        attention_windows=attention_windows)
    if loader.steps_per_epoch < 1:
        per, knob = ((f"{d.micro_batch_examples} examples", "data.micro_batch_examples")
                     if d.micro_batch_examples else (f"{d.micro_batch_rows} rows", "data.micro_batch_rows"))
        raise ValueError(
            f"the training data fills {loader.epoch_stats['rows']} rows of {d.seq_len} tokens: "
            f"fewer than one step needs ({per} x {world} ranks); add data or lower {knob}")
    return loader


def next_batch(run: Run):
    """The loader's next micro-batch. An STP run draws its spans here, on the host, from
    ``(seed, epoch, step_in_epoch, rank)``: a resumed run draws the same ones."""
    b = next(run.loader)
    if run.stp is not None:
        stp.attach(b, run.stp, seed=run.cfg.train.seed)
        b.stats.update({f"stp_{k}": b.stp.stats[k] for k in ("documents", "skipped_short", "spans")})
    return b


def _readouts(b) -> int:
    """What a micro-batch's mean cosine averages over: its JEPA pairs, or its STP spans."""
    return b.stp.num_spans if b.stp is not None else b.stats["pairs"]


def attention(cfg, device) -> str:
    """``model.attn`` with ``auto`` resolved: FlexAttention on CUDA, SDPA elsewhere, eager for
    a pretrained family that has no SDPA (Gemma-2)."""
    if cfg.model.attn != "auto":
        return cfg.model.attn
    if device.type == "cuda":
        return "flex_attention"
    return "sdpa" if not cfg.model.init_from or _supports_sdpa(cfg.model.init_from) else "eager"


@functools.lru_cache(maxsize=None)
def _supports_sdpa(init_from: str) -> bool:
    """Whether the causal-LM class of ``init_from``'s config has an SDPA attention."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = pretrained.config_of(init_from)
        return bool(getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], "_supports_sdpa", True))
    except Exception:  # noqa: BLE001 - unreadable here: build_model says why, in one line
        return True


def make_engine(cfg, tokenizer, ds_cfg: dict, device, total_steps: int, model_dir=None):
    """The model (``model_dir``: ``model.init_from`` as a local folder, else a random init;
    under ``zero.Init`` for ZeRO-3; ``model.lora_rank``: LoRA adapters by peft, only they and
    the added tokens' rows train), AdamW, the LR schedule over ``total_steps`` optimizer steps,
    the engine."""
    import deepspeed  # see setup_distributed

    attn = attention(cfg, device)
    init_ctx = deepspeed.zero.Init(config_dict_or_path=ds_cfg) if zero_stage(ds_cfg) == 3 else None
    # ZeRO-3 from a checkpoint: while this lives, transformers partitions the model as it loads
    # it and gathers what it resizes (an outer zero.Init would init weights it cannot index)
    hf_zero3 = _hf_zero3(ds_cfg) if init_ctx is not None and cfg.model.init_from else None
    if hf_zero3 is not None:
        init_ctx = None
    model = build_model(preset=None if model_dir else cfg.model.preset,
                        vocab_size=len(tokenizer), init_from=model_dir, seed=cfg.train.seed,
                        attn_implementation=attn, init_context=init_ctx)
    base_rows = model.get_input_embeddings().num_embeddings  # before the added tokens' rows
    if model_dir:
        torch.manual_seed(cfg.train.seed)  # transformers' mean resizing samples the new rows
        resize_for_tokenizer(model, tokenizer)
    objective.check_lm_head(model)  # the loss head computes the model's own logits, or one line why not
    del hf_zero3
    if cfg.model.lora_rank:  # adapters injected in place: the model stays the causal LM
        apply_lora(model, cfg.model, lora_token_ids(tokenizer, base_rows), seed=cfg.train.seed)
    optimize(model, cfg.model, device, zero_stage=zero_stage(ds_cfg))  # compile, liger, checkpointing
    module = JepaModule(model, cfg.jepa, stp_predictor=_stp_predictor(cfg, model),
                        sigreg_head=_sigreg_head(cfg, model), seed=cfg.train.seed)
    if cfg.model.lora_rank and zero_stage(ds_cfg) == 3:
        register_lora_zero3(module, model)
    optimizer = make_optimizer(cfg, param_groups(module, cfg.optim.weight_decay), ds_cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.for_config(cfg, total_steps))
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    module.register_head()
    if skips_allreduce(engine, ds_cfg):
        engine.enable_backward_allreduce = False
        log.info("one data-parallel rank under ZeRO-0: DeepSpeed's gradient all-reduce skipped (the identity)")
    keep_clip_norm(engine)
    return engine, scheduler


def keep_clip_norm(engine) -> None:
    """Outside a ZeRO or bf16 optimizer (ZeRO-0 in fp32) DeepSpeed clips the gradients with
    :func:`deepspeed.runtime.utils.clip_grad_norm_` and drops the norm it returns, so
    ``get_global_grad_norm`` (the logged ``grad_norm``) would stay None: the same call, its
    norm kept where that method reads it (on the device; read at the loop's read points)."""
    from deepspeed.runtime.utils import clip_grad_norm_  # deepspeed: see setup_distributed

    def clip_fp32_gradients():
        engine._global_grad_norm = clip_grad_norm_(
            parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(), mpu=engine.mpu)

    engine.clip_fp32_gradients = clip_fp32_gradients


def skips_allreduce(engine, ds_cfg: dict) -> bool:
    """ZeRO-0 on one data-parallel rank: DeepSpeed would still flatten every gradient into a
    bucket, all-reduce it with itself and copy it back after each backward (0.3 s of a 4.5 s
    step at SmolLM2-135M on one CPU thread, docs/benchmarks.md), which leaves the gradients
    as they are: skipped. Not with a ``communication_data_type``, whose round trip rounds them."""
    return (zero_stage(ds_cfg) == 0 and engine.dp_world_size == 1
            and "communication_data_type" not in ds_cfg)


def _hf_zero3(ds_cfg: dict):
    from transformers.integrations import HfDeepSpeedConfig  # imports deepspeed: see setup_distributed
    return HfDeepSpeedConfig(ds_cfg)


def _stp_predictor(cfg, model):
    """STP's linear predictor (``jepa.stp_predictor``), seeded. Built whole on every rank
    and handed to the engine, which partitions it under ZeRO-3 like any parameter created
    outside ``zero.Init`` (initializing it inside would write into empty partitions)."""
    if cfg.jepa.objective != "stp" or not cfg.jepa.stp_predictor:
        return None
    torch.manual_seed(cfg.train.seed)
    return stp.make_predictor(model.config.hidden_size)


def _sigreg_head(cfg, model):
    """SIGReg's learned projection to ``jepa.sigreg_head`` dimensions, seeded; built whole
    and partitioned by the engine under ZeRO-3, like the STP predictor."""
    j = cfg.jepa
    if j.sigreg <= 0 or j.sigreg_head <= 0:
        return None
    torch.manual_seed(cfg.train.seed)
    return ProjectionHead(model.config.hidden_size, j.sigreg_head)


def setup_distributed():
    import deepspeed  # loaded after console.prepare(): it prints at import
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
    with console.quiet("deepspeed.init_distributed"):  # prints the CPU shm op's build line
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return dist.get_rank(), dist.get_world_size(), device


def _free_port() -> int:
    # Bind every address (as the rendezvous store will), not only loopback.
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def make_optimizer(cfg, params, ds_cfg, device):
    """AdamW: DeepSpeed's CPU Adam where ZeRO offloads the optimizer state to the host,
    else torch's fused kernel, on CUDA and on CPU alike (measured on CPU at SmolLM2-135M:
    one step 0.17 s against 1.4 s for the single-tensor loop torch picks by default on CPU,
    1.1 s foreach, 0.25 s DeepSpeed's CPU Adam; the same update to 6e-8; docs/benchmarks.md).
    ``optim.fused``: ``on`` forces the fused kernel, ``off`` the single-tensor loop (what CPU
    runs used before 2026-12-06: their results reproduce to the last digit with it)."""
    o = cfg.optim
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    if offloads_optimizer(ds_cfg):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # deepspeed: see setup_distributed
        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    fused = {"on": True, "off": False}.get(o.fused, device.type in ("cuda", "cpu"))
    return torch.optim.AdamW(params, fused=fused, foreach=None if fused else False, **kw)


def param_groups(model, weight_decay):
    """No weight decay on norms and biases (1-D parameters)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if getattr(p, "ds_shape", p.shape).__len__() < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # LoRA trains no 1-D parameters: ZeRO drops empty groups


STOP_FILE = "STOP"


def remove_stale_stop(run_dir: str, started: float | None = None) -> bool:
    """A ``STOP`` file older than this process (``started``: its start time) was left by an
    earlier run, which it stopped: remove it, with one line, so that it does not stop this
    one at the first read point. One touched since this process started is honoured."""
    path = os.path.join(run_dir, STOP_FILE)
    started = psutil.Process().create_time() if started is None else started
    try:
        if os.stat(path).st_mtime >= started:
            return False
        os.remove(path)
    except FileNotFoundError:
        return False
    log.warning("removed %s: a STOP file from before this start (touch it again to stop this run)", path)
    return True


class StopFlag:
    """A request to stop: SIGTERM/SIGINT on any rank, or a ``STOP`` file in the run dir that
    rank 0 looks for (one ``stat``) at every read point. The loop agrees on it in the read's
    all-reduce, saves a checkpoint and exits 0."""

    def __init__(self, stop_file: str | None):
        self.signal, self.stop_file, self.by_file = None, stop_file, False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.signal = signum

    def requested(self) -> bool:
        if self.stop_file and not self.by_file:
            self.by_file = os.path.exists(self.stop_file)
        return bool(self.signal) or self.by_file

    def consume(self) -> str:
        """What stopped the run; removes the STOP file so that the resumed run goes on."""
        if self.by_file:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.stop_file)
            return "STOP file"
        if self.signal:
            return signal.Signals(self.signal).name
        return "a stop request on another rank"


def _progress(run: Run):
    if not run.is_main:
        return None
    return tqdm(total=run.total, initial=run.start, desc="train", unit="step",
                dynamic_ncols=True, file=sys.stdout, mininterval=1.0)


# ------------------------------------------------------------------ device-side sums

class Tally:
    """What the loop adds up between read points, and the one read that reduces it.

    ::

        device  loss, lm_loss, jepa_loss, cos*pairs    this step (scaled micro-batch losses)
        device  non-finite micro-batches, first non-finite step (0: none)   since the last read
        device  SIGReg summed over this step's micro-steps (each rank holds the global value)
        host    real tokens, examples, attended pairs, capacity, label tokens   since the last read

    :meth:`read` all-reduces ``[device sums | host counts | signal | first step per rank]``
    (one tensor, one collective) and reads it once; the step's losses are global means, the
    throughput covers every step since the previous read. ``examples`` and ``tokens`` are the
    loader's cumulative counts (all ranks, carried across a resume).
    """

    HOST = ("real_tokens", "examples", "attended_pairs", "capacity", "label_tokens",
            "stp_documents", "stp_skipped_short", "stp_spans")

    def __init__(self, run: Run):
        self.run = run
        self.scale = run.cfg.optim.grad_accum * run.world
        self.sums = torch.zeros(6, dtype=torch.float64, device=run.device)
        self.first_bad = torch.zeros((), dtype=torch.float64, device=run.device)
        self.restart(run.start)

    def restart(self, step: int) -> None:
        """A new window starting after ``step``."""
        self.since, self.t0 = step, time.perf_counter()
        self.window = dict.fromkeys(self.HOST, 0)
        self.sums.zero_()
        self.first_bad.zero_()

    def begin_step(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's denominators ``global count / (grad_accum * world)`` for the label
        tokens and the JEPA pairs, as 0-dim device tensors (all-reduced, never read)."""
        for key in self.HOST:
            self.window[key] += sum(b.stats.get(key, 0) for b in batches)
        self.step_pairs = sum(_readouts(b) for b in batches)
        jepa = sum(objective.jepa_count(b, "views" if b.stp is None else "stp") for b in batches)
        self.sums[:4].zero_()
        self.sums[5].zero_()
        counts = _device_tensor([sum(b.stats["label_tokens"] for b in batches), jepa],
                                self.run.device)
        dist.all_reduce(counts)
        den = (counts.clamp_min(1) / self.scale).float()
        return den[0], den[1]

    def add(self, step: int, loss, lm_loss, jepa_loss, cos, pairs: int, sigreg=None) -> None:
        loss = loss.detach()
        self.sums[:4] += torch.stack([loss.double(), lm_loss.double(), jepa_loss.double(),
                                      cos.double() * pairs])
        if sigreg is not None:
            self.sums[5] += sigreg.double()
        bad = ~torch.isfinite(loss)
        self.sums[4] += bad
        self.first_bad.copy_(torch.where(bad & (self.first_bad == 0), float(step), self.first_bad))

    def read(self, step: int, signal) -> tuple[dict, dict]:
        """``(metrics, flags)`` of the window ending at ``step`` (collective; one host read)."""
        run, w = self.run, self.window
        host = [self.step_pairs] + [w[k] for k in self.HOST] + [1.0 if signal else 0.0]
        slots = torch.zeros(run.world, dtype=torch.float64, device=run.device)
        slots[run.rank] = self.first_bad
        vec = torch.cat([self.sums, _device_tensor(host, run.device), slots])
        dist.all_reduce(vec)
        (loss, lm, jepa, cos_w, bad, reg, pairs, tokens, examples, attn, capacity, labels,
         stp_docs, stp_short, stp_spans, sig, *first) = vec.tolist()
        dt = time.perf_counter() - self.t0
        steps = max(1, step - self.since)
        tflops = run.flops.step_flops(tokens, labels, attn) / dt / 1e12 / run.world
        metrics = {
            "loss": loss / self.scale, "lm_loss": lm / self.scale, "jepa_loss": jepa / self.scale,
            "cosine": cos_w / max(pairs, 1), "lr": run.scheduler.get_last_lr()[0],
            "grad_norm": _grad_norm(run.engine), "tokens_per_s": tokens / dt,
            "samples_per_s": examples / dt, "packing_efficiency": tokens / max(capacity, 1),
            "step_time_s": dt / steps, "tflops": tflops,
            "mfu": tflops / run.peak_tflops if run.peak_tflops else float("nan"),
            "peak_memory_gb": peak_memory_gb(), "skipped_steps": run.engine.skipped_steps,
            "epoch": run.loader.epoch, "examples": run.loader.seen["examples"],
            "tokens": run.loader.seen["tokens"],
        }
        if run.cfg.jepa.sigreg > 0:  # mean over the step's micro-steps
            metrics["sigreg"] = reg / self.scale
        if run.stp is not None:  # since the last read, all ranks; short = fewer than 3 tokens
            metrics.update({"stp/documents": stp_docs, "stp/skipped_short": stp_short,
                            "stp/spans": stp_spans})
        bad_steps = [int(s) for s in first if s > 0]
        flags = {"nonfinite": int(bad), "first_nonfinite_step": min(bad_steps, default=0),
                 "since": self.since, "signal": sig > 0}
        return metrics, flags


def _device_tensor(values, device) -> torch.Tensor:
    """Host numbers as a float64 tensor on ``device`` (pinned, non-blocking copy on CUDA)."""
    return to_device(torch.tensor(values, dtype=torch.float64), device)


def _grad_norm(engine) -> float:
    g = engine.get_global_grad_norm()
    if g is None:
        return float("nan")
    return float(g.reshape(-1)[0].item() if torch.is_tensor(g) else g)


# ------------------------------------------------------------ checks, eval, save, finish

def check_finite(run: Run, step: int, flags: dict, metrics: dict) -> None:
    """Stop (raise :class:`NonFiniteLoss`) or report the skipped updates, per
    ``train.on_nonfinite``; the same decision on every rank (the flags are all-reduced)."""
    if not flags["nonfinite"]:
        return
    first = flags["first_nonfinite_step"]
    msg = f"non-finite loss at step {first}"
    if first == step:
        msg += f" (loss={metrics['loss']})"
    if flags["nonfinite"] > 1:
        msg += f"; {flags['nonfinite']} non-finite micro-batch losses (all ranks) in steps {flags['since'] + 1}..{step}"
    if run.cfg.train.on_nonfinite == "stop":
        raise NonFiniteLoss(msg + "; stopping (train.on_nonfinite=stop). The last good "
                            f"checkpoint is in {run.ckpt_root}")
    if run.is_main:
        log.warning(msg + "; the update was skipped (train.on_nonfinite=skip; skipped_steps=%d)",
                    run.engine.skipped_steps)


def held_out_eval(run: Run, step: int) -> None:
    """Held-out losses and representation diagnostics, logged at ``step`` (collective)."""
    held = held_out_metrics(run.engine, run.cfg, run.data, run.rank, run.world, run.device)
    if run.is_main:
        run.logger.log(step, held["scalars"])
        if run.logger.writer is not None and held.get("diagnostics"):
            log_diagnostics(run.logger.writer, step, held["diagnostics"])


def save(run: Run, step: int) -> None:
    client = {"step": step, "loader": run.loader.state_dict(), "config": run.cfg.to_dict()}
    checkpoint.save(run.engine, run.ckpt_root, step, client, run.cfg.to_yaml(),
                    keep=run.cfg.train.keep_checkpoints, rank=run.rank)
    if run.is_main:
        log.info("saved checkpoint %s", os.path.join(run.ckpt_root, checkpoint.tag_for(step)))


def finish(run: Run, step: int, exit_reason: str, last: dict) -> dict:
    """Close the logs; one line when the run stopped early. The result's ``done``: the run
    reached its last step (``checkpoint``: that step's), for :mod:`megajepa.launch`."""
    cfg = run.cfg
    if step == run.start and run.start > 0:
        console.say(f"checkpoint is already at step {run.start} of {run.end}: nothing to train")
    run.logger.close()
    done = exit_reason == "done" and step >= run.total and not cfg.train.stop_at
    result = {"step": step, "exit": exit_reason, "run_dir": run.run_dir, "done": done,
              "checkpoint": os.path.join(run.ckpt_root, checkpoint.tag_for(step)),
              "ckpt_root": run.ckpt_root, "data": run.data, "module": run.engine.module, **last}
    dist.barrier()
    if not done and step > run.start:
        by = "train.stop_at" if exit_reason == "done" else exit_reason
        console.say(f"stopped at step {step} by {by}; checkpoint "
                    f"{result['checkpoint']}; resume with --resume auto")
    return result
