"""pretrain.py against the Hugging Face Trainer (what a user would pick instead), side by side
on one process: step time, real tokens/s and where the time goes.

Arms (``--arms``), each a fresh child process, run back to back (``--rounds`` times, in turn):

    trainer       transformers.Trainer on padded batches of the same examples:
                  DataCollatorForSeq2Seq (labels on the answer only, -100 padding), the
                  Trainer's default AdamW (``optim`` of the installed transformers), the same
                  lr / betas / weight decay / clipping / cosine-to-min_lr schedule, no
                  eval, save or logging, dataloader_num_workers=0
    trainer_jepa  the same Trainer computing LLM-JEPA the paper's way: three padded forward
                  passes (text+code with the LM loss, text+<pred_1..k>, code alone),
                  loss = LM + lambda * (1 - cos)
    nt            pretrain.py --lambda 0 (next-token; packed rows, no JEPA segments)
    jepa          pretrain.py --lambda 1 --k K (LLM-JEPA, one pass over packed rows)
    NAME=KIND:FLAGS   another arm of KIND with more flags (pretrain.py flags for nt/jepa,
                  ``key=value`` TrainingArguments for the trainer kinds), e.g.
                  ``nt_zero1=nt:--train.ds_config ds_configs/zero1.json`` or
                  ``trainer_plain=trainer:optim=adamw_torch``

Same model: ``--model`` (a Hugging Face folder) resized once to the store's tokenizer (its
``<pred_i>`` tokens) and saved under ``--out``; every arm starts from those weights.
Same examples: pretrain.py with ``data.micro_batch_examples E`` takes examples
``[s*E, (s+1)*E)`` of its epoch-0 visit order at step s (megajepa.loader); the Trainer gets
the same E examples at step s (a sequential sampler over that order). Same threads
(``--threads``, OMP_NUM_THREADS and torch.set_num_threads in each child) and precision.

What is timed, per optimizer step (wall clock, perf_counter):

    trainer  cycle = on_step_end to on_step_end (TrainerCallback): data (batch fetch and
             collation, before on_step_begin) + forward (compute_loss, the mask inside it)
             + backward (to on_pre_optimizer_step: backward and clipping) + optimizer
             (on_pre_optimizer_step to on_optimizer_step) + other (scheduler, zero_grad)
    ours     step_time_s of pretrain.py's own metrics.jsonl (train.log_every 1); the
             breakdown from timers around train.next_batch (data: packing), the engine's
             forward (the mask: objective.attention_mask_for), backward and step (optimizer)

Checkpoints are not part of the measurement (the ours children skip train.save). Tokens/s
counts the examples' own tokens (|T| + |C|, the same for every arm); the padded tokens
(trainer) and packed tokens (ours, JEPA segments included) are reported beside it. The first
step's loss of trainer and nt is the same objective on the same weights and examples: their
difference checks that the arms compare like with like. The JEPA arm is reported beside the
design bound (|T| + 2|C| + k) / (|T| + |C|) of the timed examples.

``--optimizers`` also times one AdamW step alone on the model's parameters: torch's
single-tensor, foreach and fused implementations and DeepSpeed's CPU Adam (checked to give
the same update as the single-tensor one).

    python scripts/make_tiny_hf.py --data data.jsonl --preset tiny --out /tmp/tiny_hf
    python -m data_tools.preprocess data.jsonl --tokenizer /tmp/tiny_hf --template chat --out /tmp/tiny_store
    python scripts/bench/trainer.py --model /tmp/tiny_hf --store /tmp/tiny_store --out /tmp/bt
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import (ROOT, Timers, markdown_table, provenance, read_metrics,  # noqa: E402
                           run_logged, spread, tail, write_report)
from megajepa.cli import HelpFormatter, child_env, positive_int  # noqa: E402

KINDS = ("trainer", "trainer_jepa", "nt", "jepa")
PARTS = ("data", "forward", "mask", "backward", "optimizer", "other")


# ----------------------------------------------------------------------------- the plan

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    p.add_argument("--store", required=True, help="pair store made by data_tools.preprocess with that "
                                                  "model's tokenizer (--template chat)")
    p.add_argument("--out", required=True, help="folder for the resized model, the runs and trainer.{md,json}")
    p.add_argument("--arms", default="trainer,nt,jepa", help="comma list: trainer, trainer_jepa, nt, jepa "
                   "or NAME=KIND:FLAGS (see above); the first trainer-kind arm is the baseline")
    p.add_argument("--examples", type=positive_int, default=8, help="examples per optimizer step")
    p.add_argument("--seq-len", type=positive_int, default=160,
                   help="pretrain.py's row length in tokens (rows are packed, not padded to it)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the figures")
    p.add_argument("--steps", type=positive_int, default=8, help="timed steps per arm")
    p.add_argument("--rounds", type=positive_int, default=1, help="times to run every arm, in turn")
    p.add_argument("--k", type=positive_int, default=1, help="predictor tokens of the JEPA arms")
    p.add_argument("--lbd", type=float, default=1.0, help="lambda of the JEPA arms")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (no warm-up, cosine to 0.1x)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per process")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32, or bf16 (trainer: autocast, bf16=True; ours: train.precision bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizers", action="store_true", help="also time one AdamW step alone per implementation")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child")
    return p


def parse_arms(text: str) -> list[dict]:
    arms = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, eq, rest = item.partition("=")
        if not eq:
            name, kind, flags = item, item, ""
        else:
            kind, _, flags = rest.partition(":")
        if kind not in KINDS:
            raise ValueError(f"--arms {item!r}: the kind must be one of {', '.join(KINDS)}")
        arms.append(dict(name=name, kind=kind, flags=flags.split()))
    if len({a["name"] for a in arms}) != len(arms) or not arms:
        raise ValueError(f"--arms {text!r}: give each arm once")
    return arms


def step_groups(store_path: str, a) -> list[list[int]]:
    """Example indices of each optimizer step, as pretrain.py's loader takes them (epoch 0);
    the same for the next-token and JEPA layouts (checked)."""
    from data_tools.store import open_store
    from megajepa.loader import PackedLoader

    store = open_store(store_path)
    if store.kind != "pair":
        raise ValueError(f"--store {store_path}: a pair store is needed, this one holds {store.kind!r} examples")
    pred = store.manifest.get("pred_ids") or [0] * a.k
    groups = {}
    for ratio in (0.0, 1.0):
        loader = PackedLoader(store, seq_len=a.seq_len, micro_batch_rows=1, k=a.k, pred_ids=pred,
                              pad_id=0, seed=a.seed, micro_batch_examples=a.examples, jepa_ratio=ratio)
        n = a.warmup + a.steps
        if loader.steps_per_epoch < n:
            raise ValueError(f"--store {store_path}: {loader.steps_per_epoch} steps of {a.examples} examples "
                             f"fit in --seq-len {a.seq_len}; the run needs {n}")
        groups[ratio] = [sorted(i for row in loader.rows_of(0, s) for i in row) for s in range(n)]
    if groups[0.0] != groups[1.0]:
        raise ValueError(f"--seq-len {a.seq_len} drops some JEPA examples that next-token keeps; raise it")
    return groups[0.0]


def prepare_model(model: str, store_path: str, out: Path, seed: int) -> tuple[str, int]:
    """The model resized to the store's tokenizer (mean-resized <pred_i> rows, seeded), saved
    with that tokenizer: every arm starts from these weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_tools.store import open_store
    from megajepa.model import resize_for_tokenizer

    tok = AutoTokenizer.from_pretrained(open_store(store_path).tokenizer_path)
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    resize_for_tokenizer(m, tok)
    dst = out / "model"
    m.save_pretrained(dst)
    tok.save_pretrained(dst)
    return str(dst), sum(p.numel() for p in m.parameters())


def child_spec(a, arm: dict, model_dir: str, groups, run_dir: str) -> dict:
    n = a.warmup + a.steps
    spec = dict(kind=arm["kind"], flags=arm["flags"], threads=a.threads, model=model_dir, store=a.store,
                groups=groups, k=a.k, lbd=a.lbd, lr=a.lr, seed=a.seed, precision=a.precision,
                run_dir=run_dir)
    if arm["kind"] in ("nt", "jepa"):
        spec["argv"] = [
            "--init-from", model_dir, "--data.train", a.store, "--data.seq_len", str(a.seq_len),
            "--data.micro_batch_examples", str(a.examples), "--steps", str(n), "--k", str(a.k),
            "--lambda", "0" if arm["kind"] == "nt" else str(a.lbd), "--lr", str(a.lr),
            "--optim.warmup_steps", "0", "--train.precision", a.precision, "--seed", str(a.seed),
            "--train.log_every", "1", "--train.save_every", str(10 * n), "--train.export", "false",
            "--train.final_eval", "false", "--run-dir", run_dir, *arm["flags"]]
    return spec


def run_child(spec: dict, out_json: Path, log_path: Path, timeout: float) -> dict:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    spec_path = out_json.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(child_env(), OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    rc, wall = run_logged([sys.executable, __file__, "--child", str(spec_path), str(out_json)],
                          log_path, env, timeout)
    if rc != 0 or not out_json.exists():
        return dict(ok=False, error=f"exit {rc}: {tail(str(log_path))}", wall_s=wall)
    return dict(ok=True, wall_s=wall, **json.loads(out_json.read_text()))


# --------------------------------------------------------------------------- the children

def child(spec_path: str, out_json: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    result = (trainer_child if spec["kind"].startswith("trainer") else ours_child)(spec)
    result.update(threads=torch.get_num_threads(), torch=torch.__version__)
    Path(out_json).write_text(json.dumps(result))
    return 0


def trainer_examples(spec, tok) -> list[dict]:
    """The examples of every step, in step order: text+code with labels on the code, plus the
    JEPA views (text+<pred_1..k>, code alone) for trainer_jepa."""
    from data_tools.store import open_store

    store = open_store(spec["store"])
    pred = store.manifest["pred_ids"][:spec["k"]]
    items = []
    for group in spec["groups"]:
        for i in group:
            text, code = store.views(i)
            item = dict(input_ids=text + code, labels=[-100] * len(text) + code,
                        attention_mask=[1] * (len(text) + len(code)))
            if spec["kind"] == "trainer_jepa":
                item.update(view_ids=text + pred, code_ids=code)
            items.append(item)
    return items


def _pad(seqs, pad_id):
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
    return ids, mask


def _trainer_overrides(flags: list[str]) -> dict:
    out = {}
    for f in flags:
        key, eq, value = f.partition("=")
        if not eq:
            raise ValueError(f"trainer flag {f!r}: expected key=value (TrainingArguments)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def trainer_child(spec) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import SequentialSampler
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    from megajepa.config import Config

    timers, losses, tokens = Timers(), [], []
    tok = AutoTokenizer.from_pretrained(spec["model"])
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    mod = sys.modules[type(model).__module__]
    if hasattr(mod, "create_causal_mask"):  # the model's causal + padding mask
        timers.wrap(mod, "create_causal_mask", "mask")
    items = trainer_examples(spec, tok)
    jepa = spec["kind"] == "trainer_jepa"
    lm_collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

    def collate(features):
        extra = [{k: f.pop(k) for k in ("view_ids", "code_ids")} for f in features] if jepa else None
        batch = lm_collate(features)
        if jepa:
            batch["view_ids"], batch["view_mask"] = _pad([e["view_ids"] for e in extra], tok.pad_token_id)
            batch["code_ids"], batch["code_mask"] = _pad([e["code_ids"] for e in extra], tok.pad_token_id)
        return batch

    class Timed(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            t0 = time.perf_counter()
            m = inputs["attention_mask"]
            tokens.append((int(m.sum()), m.numel()))
            views = {k: inputs.pop(k) for k in ("view_ids", "view_mask", "code_ids", "code_mask") if k in inputs}
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if views:  # the paper's three passes: Pred(text) from text+preds, Enc(code) from code
                base = model.get_decoder()
                ends = []
                for ids, mask in ((views["view_ids"], views["view_mask"]), (views["code_ids"], views["code_mask"])):
                    h = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                    ends.append(h[torch.arange(len(h)), mask.sum(1) - 1])
                loss = loss + spec["lbd"] * (1 - F.cosine_similarity(ends[0], ends[1], dim=-1)).mean()
            losses.append(float(loss.detach()))
            timers.events.append(("forward", t0, time.perf_counter()))
            return loss

    class StepMarks(TrainerCallback):
        def on_train_begin(self, *args, **kw):
            timers.mark("step_end")  # the first step's data time starts here

        def on_step_begin(self, *args, **kw):
            timers.mark("step_begin")

        def on_pre_optimizer_step(self, *args, **kw):
            timers.mark("pre_optimizer")

        def on_optimizer_step(self, *args, **kw):
            timers.mark("optimizer_done")

        def on_step_end(self, *args, **kw):
            timers.mark("step_end")

    o = Config().optim
    kw = dict(output_dir=os.path.join(spec["run_dir"], "trainer"), per_device_train_batch_size=len(spec["groups"][0]),
              gradient_accumulation_steps=1, max_steps=len(spec["groups"]), learning_rate=spec["lr"],
              weight_decay=o.weight_decay, adam_beta1=o.beta1, adam_beta2=o.beta2, adam_epsilon=o.eps,
              max_grad_norm=o.grad_clip, lr_scheduler_type="cosine_with_min_lr",
              lr_scheduler_kwargs={"min_lr_rate": o.min_lr_ratio}, warmup_steps=0,
              bf16=spec["precision"] == "bf16", use_cpu=not torch.cuda.is_available(),
              dataloader_num_workers=0, dataloader_pin_memory=False, eval_strategy="no", save_strategy="no",
              logging_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
              seed=spec["seed"], data_seed=spec["seed"])
    kw.update(_trainer_overrides(spec["flags"]))
    args = TrainingArguments(**kw)
    trainer = Timed(model=model, args=args, train_dataset=items, data_collator=collate, callbacks=[StepMarks()])
    trainer.train()
    steps = trainer_breakdown(timers.events)
    for s, (real, padded) in zip(steps, tokens):
        s.update(real_tokens=real, padded_tokens=padded)
    for s, loss in zip(steps, losses):
        s["loss"] = loss
    return dict(steps=steps, optim=args.optim.value if hasattr(args.optim, "value") else str(args.optim),
                params=sum(p.numel() for p in model.parameters()))


def trainer_breakdown(events) -> list[dict]:
    """Per-step seconds from the callback marks and the compute_loss / mask intervals."""
    marks = [(label, t0) for label, t0, t1 in events if t0 == t1]
    ends = [t for label, t in marks if label == "step_end"]
    steps = []
    for prev, end in zip(ends, ends[1:]):
        inside = [(lab, t0, t1) for lab, t0, t1 in events if prev < t1 <= end]
        at = {lab: t0 for lab, t0, t1 in inside if t0 == t1}
        fwd = [(t0, t1) for lab, t0, t1 in inside if lab == "forward"]
        s = dict(time_s=end - prev, step_s=end - at["step_begin"], data=at["step_begin"] - prev,
                 forward=sum(t1 - t0 for t0, t1 in fwd),
                 mask=sum(t1 - t0 for lab, t0, t1 in inside if lab == "mask"),
                 backward=at["pre_optimizer"] - fwd[-1][1],
                 optimizer=at["optimizer_done"] - at["pre_optimizer"])
        s["other"] = s["time_s"] - s["data"] - s["forward"] - s["backward"] - s["optimizer"]
        steps.append(s)
    return steps


def ours_child(spec) -> dict:
    """pretrain.py's main in this process, with timers around its parts; checkpoints skipped."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    from megajepa import launch, objective, train as train_mod

    timers = Timers()
    timers.wrap(train_mod, "next_batch", "data")
    timers.wrap(objective, "attention_mask_for", "mask")
    timers.wrap(DeepSpeedEngine, "forward", "forward")
    timers.wrap(DeepSpeedEngine, "backward", "backward")
    timers.wrap(DeepSpeedEngine, "step", "optimizer")
    train_mod.save = lambda run, step: None  # checkpoints are not part of the measurement
    if launch.main(spec["argv"]) != 0:
        raise SystemExit("pretrain.py failed")
    parts = timers.per_step("optimizer")
    recs = {r["step"]: r for r in read_metrics(os.path.join(spec["run_dir"], "metrics.jsonl"))}
    steps = []
    for i, p in enumerate(parts):
        r = recs[i + 1]
        s = dict(time_s=r["step_time_s"], loss=r["loss"], lm_loss=r["lm_loss"],
                 packed_tokens=r["tokens_per_s"] * r["step_time_s"],
                 capacity=r["tokens_per_s"] * r["step_time_s"] / r["packing_efficiency"],
                 packing_efficiency=r["packing_efficiency"],
                 **{k: p.get(k, 0.0) for k in ("data", "forward", "mask", "backward", "optimizer")})
        s["other"] = s["time_s"] - s["data"] - s["forward"] - s["backward"] - s["optimizer"]
        steps.append(s)
    cfg_path = os.path.join(spec["run_dir"], "train.log")
    argv = spec["argv"]
    picked = argv[len(argv) - 1 - argv[::-1].index("--train.ds_config") + 1] if "--train.ds_config" in argv else ""
    if not picked and os.path.exists(cfg_path):
        picked = next((line.split("train.ds_config=auto: ")[1].split()[0] for line in open(cfg_path)
                       if "train.ds_config=auto: " in line), "")
    return dict(steps=steps, ds_config=picked)


# ----------------------------------------------------------------------------- optimizers

def optimizer_bench(model_dir: str, threads: int, reps: int = 4) -> list[dict]:
    """One AdamW step alone on the model's parameters, per implementation (median of
    ``reps`` after one warm-up step), and the largest difference of its updated weights
    from the single-tensor implementation's after 2 steps."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in base]
    kw = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def make(name, params):
        if name == "deepspeed_cpu_adam":
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # builds its C++ op on first use
            return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
        flag = {"single_tensor": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[name]
        return torch.optim.AdamW(params, **flag, **kw)

    out, ref = [], None
    for name in ("single_tensor", "foreach", "fused", "deepspeed_cpu_adam"):
        params = [torch.nn.Parameter(b.clone()) for b in base]
        for p, gr in zip(params, grads):
            p.grad = gr
        try:
            opt = make(name, params)
            times = []
            for i in range(reps + 1):
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
                if i == 1:
                    after = [p.detach().clone() for p in params]
        except Exception as e:  # an implementation this machine lacks: reported, not fatal
            out.append(dict(name=name, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        ref = ref or after
        diff = max(float((x - y).abs().max()) for x, y in zip(after, ref))
        out.append(dict(name=name, **spread(times[1:]), max_abs_diff=diff))
    return out


# ------------------------------------------------------------------------------ summary

def summarize(arms: list[dict], results: dict, a, tokens_per_step: list[int], bound: float) -> dict:
    """Per arm: step-time spread, tokens/s, parts; ratios against the baseline arms."""
    timed = slice(a.warmup, a.warmup + a.steps)
    summary = {}
    for arm in arms:
        runs = [r for r in results[arm["name"]] if r["ok"]]
        if not runs:
            summary[arm["name"]] = dict(ok=False, error=results[arm["name"]][-1]["error"])
            continue
        steps = [s for r in runs for s in r["steps"][timed]]
        rounds = [spread([s["time_s"] for s in r["steps"][timed]])["median"] if r["ok"] else None
                  for r in results[arm["name"]]]
        per_step = [[r["steps"][i]["time_s"] for r in runs] for i in range(a.warmup, a.warmup + a.steps)]
        total = sum(s["time_s"] for s in steps)
        summary[arm["name"]] = dict(
            ok=True, kind=arm["kind"], flags=" ".join(arm["flags"]), time=spread([s["time_s"] for s in steps]),
            rounds=rounds,
            per_step=[float(np.median(x)) for x in per_step],
            tokens_per_s=sum(tokens_per_step[timed]) * len(runs) / total,
            parts={k: sum(s.get(k, 0.0) for s in steps) / len(steps) for k in PARTS},
            first_loss=runs[0]["steps"][0]["loss"], losses=[s["loss"] for s in runs[0]["steps"]],
            extra={k: v for k, v in runs[0].items() if k in ("optim", "ds_config", "threads", "params")},
            padded_tokens=np.mean([s["padded_tokens"] for s in steps]) if "padded_tokens" in steps[0] else None,
            packed_tokens=np.mean([s["packed_tokens"] for s in steps]) if "packed_tokens" in steps[0] else None,
            capacity=np.mean([s["capacity"] for s in steps]) if "capacity" in steps[0] else None)
    base = next((arm["name"] for arm in arms if arm["kind"] == "trainer" and summary[arm["name"]]["ok"]), None)
    nt = next((arm["name"] for arm in arms if arm["kind"] == "nt" and summary[arm["name"]]["ok"]), None)
    for name, s in summary.items():
        if not s["ok"]:
            continue
        for ref, key in ((base, "vs_trainer"), (nt, "vs_nt")):
            if ref and ref != name:
                r = summary[ref]
                paired = spread([x / y for x, y in zip(s["per_step"], r["per_step"])])
                per_round = [x / y for x, y in zip(s["rounds"], r["rounds"]) if x and y]
                s[key] = dict(ratio_of_medians=s["time"]["median"] / r["time"]["median"], paired=paired,
                              per_round=per_round)
    return dict(arms=summary, baseline=base, nt=nt, bound=bound)


def markdown(rep: dict) -> str:
    s = rep["summary"]
    lines = [f"device: {rep['device']}; {rep['date']}; torch {rep['torch']}, transformers {rep['transformers']}, "
             f"deepspeed {rep['deepspeed']}; {rep['threads']} thread(s) per process; {rep['precision']}",
             f"model: {rep['model']} ({rep['params']:,} parameters); store: {rep['store']}; "
             f"{rep['examples']} examples per optimizer step, {rep['warmup']} warm-up + {rep['steps']} timed "
             f"steps per arm, {rep['rounds']} round(s); mean |T| {rep['mean_text']:.1f}, |C| {rep['mean_code']:.1f} "
             f"tokens; {rep['tokens_per_step']:.0f} example tokens per step; seq_len {rep['seq_len']}; k {rep['k']}",
             f"command: `{rep['command']}`", ""]
    head = ["arm", "median s / step", "IQR s", "vs trainer (ratio of medians; paired per-step median [IQR])",
            "vs nt", "example tokens/s", "tokens run / step", "first loss"]
    rows = []
    for name, a in s["arms"].items():
        if not a["ok"]:
            rows.append([name, "failed: " + a["error"].splitlines()[-1][:80]] + [""] * (len(head) - 2))
            continue

        def vs(key):
            v = a.get(key)
            if not v:
                return ""
            p = v["paired"]
            text = f"{v['ratio_of_medians']:.2f} ({p['median']:.2f} [{p['q1']:.2f}-{p['q3']:.2f}])"
            if len(v["per_round"]) > 1:
                text += "; by round " + ", ".join(f"{x:.2f}" for x in v["per_round"])
            return text

        run = (f"{a['padded_tokens']:.0f} padded" if a["padded_tokens"] is not None
               else f"{a['packed_tokens']:.0f} packed in {a['capacity']:.0f}")
        label = f"{name} ({a['kind']}{', ' + a['flags'] if a['flags'] else ''})"
        by_round = ("; by round " + ", ".join(f"{x:.2f}" if x else "failed" for x in a["rounds"])
                    if len(a["rounds"]) > 1 else "")
        rows.append([label, f"{a['time']['median']:.3f}{by_round}", f"{a['time']['q1']:.3f}-{a['time']['q3']:.3f}",
                     vs("vs_trainer"), vs("vs_nt"), f"{a['tokens_per_s']:.1f}",
                     run,
                     f"{a['first_loss']:.5f}"])
    lines += [markdown_table(head, rows), "",
              f"design bound for the JEPA arm: (|T| + 2|C| + k) / (|T| + |C|) = {s['bound']:.3f} (timed examples)",
              "", "Where the time goes (mean seconds per timed step; mask is inside forward):", ""]
    rows = []
    for name, a in s["arms"].items():
        if a["ok"]:
            rows.append([name] + [f"{a['parts'][k]:.3f}" for k in PARTS] + [f"{a['time']['median']:.3f}",
                         ", ".join(f"{k} {v}" for k, v in a["extra"].items() if k != "params")])
    lines.append(markdown_table(["arm", *PARTS, "median step", "notes"], rows))
    if rep.get("optimizers"):
        lines += ["", "One AdamW step alone on the model's parameters (median of 4 after a warm-up step):", ""]
        rows = [[o["name"], o.get("error") or f"{o['median']:.3f}", "" if "error" in o else f"{o['max_abs_diff']:.1e}"]
                for o in rep["optimizers"]]
        lines.append(markdown_table(["implementation", "s / step", "max |w - single_tensor's| after 2 steps"], rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2])
    a = build_parser().parse_args(argv)
    try:
        arms = parse_arms(a.arms)
        if a.warmup < 1:
            raise ValueError("--warmup must be >= 1 (the first step's data time needs a previous step)")
        for flag, path in (("--model", a.model), ("--store", a.store)):
            if not os.path.isdir(path):
                raise ValueError(f"{flag} {path}: no such folder")
        groups = step_groups(a.store, a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import deepspeed
    import torch
    import transformers

    from data_tools.store import open_store

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, params = prepare_model(a.model, a.store, out, a.seed)
    st = open_store(a.store)
    lengths = st.view_lengths.reshape(-1, 2).astype(np.int64)
    flat = [i for g in groups for i in g]
    tokens_per_step = [int(lengths[g].sum()) for g in groups]
    t, c = lengths[flat[a.warmup * a.examples:], 0], lengths[flat[a.warmup * a.examples:], 1]
    bound = (t.sum() + 2 * c.sum() + a.k * len(t)) / (t.sum() + c.sum())
    results = {arm["name"]: [] for arm in arms}
    for r in range(a.rounds):
        for arm in arms:
            d = out / "runs" / f"{arm['name']}_r{r}"
            spec = child_spec(a, arm, model_dir, groups, str(d))
            print(f"== round {r}: {arm['name']}", flush=True)
            res = run_child(spec, d / "result.json", out / "runs" / f"{arm['name']}_r{r}.log", a.timeout)
            results[arm["name"]].append(res)
            print(f"   {'ok' if res['ok'] else 'FAILED'} in {res['wall_s']:.0f} s"
                  + (f": median {spread([s['time_s'] for s in res['steps'][a.warmup:]])['median']:.3f} s/step"
                     if res["ok"] else f"\n{res['error']}"), flush=True)
    optimizers = None
    if a.optimizers:
        print("== optimizers", flush=True)
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); from bench import trainer as b; "
                f"print('RESULT', json.dumps(b.optimizer_bench({model_dir!r}, {a.threads})))")
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           env=dict(child_env(), OMP_NUM_THREADS=str(a.threads)), timeout=a.timeout)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        optimizers = json.loads(line[7:]) if line else [dict(name="all", error=p.stderr[-300:])]
    summary = summarize(arms, results, a, tokens_per_step, bound)
    rep = dict(**provenance(__file__, argv), torch=torch.__version__,
               transformers=transformers.__version__, deepspeed=deepspeed.__version__, threads=a.threads,
               precision=a.precision, model=a.model, params=params, store=a.store, examples=a.examples,
               warmup=a.warmup, steps=a.steps, rounds=a.rounds, seq_len=a.seq_len, k=a.k,
               mean_text=float(t.mean()), mean_code=float(c.mean()),
               tokens_per_step=float(np.mean(tokens_per_step[a.warmup:])),
               summary=summary, optimizers=optimizers, results=results)
    md = markdown(rep)
    write_report(out / "trainer.md", md, rep)
    print(md)
    return 0 if all(x["ok"] for x in summary["arms"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
