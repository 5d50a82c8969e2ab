"""The run configuration: typed dataclasses, loadable from YAML, overridable by flags.

Precedence: dataclass defaults < ``--config file.yaml`` < command-line flags. Every field is
a flag named ``--section.field`` (``--jepa.k 3``); the paper's knobs also answer to their
names (``--k``, ``--lambda``/``--lbd``, ``--gamma``) and a few everyday ones have short
aliases (``--seed``, ``--steps``, ``--lr``, ``--run-dir``, ``--resume``).

:func:`validate` rejects impossible combinations before any work, with a message that says
how to fix them; the data-dependent checks (``k`` against the tokenizer's predictor tokens,
``seq_len`` against the shortest example) run in ``train.py`` once the data is known.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml

from megajepa.presets import PRESETS
from megajepa.stp import StpSpec


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    preset: str = _f("tiny", "model shape for random init: tiny, mini, small, 125m, llama-3.2-1b, "
                              "llama-3.2-3b, llama-3.1-8b")
    init_from: str | None = _f(None, "pretrained checkpoint to fine-tune (overrides preset): a "
                                     "local Hugging Face folder, a hub name org/name, or a .gguf "
                                     "file (converted once into <run_dir>/init_model)")
    attn: str = _f("auto", "attention backend: auto (flex_attention on CUDA, sdpa on CPU), "
                           "sdpa, flex_attention, eager")
    compile: str = _f("auto", "torch.compile: auto (layers on CUDA unless ZeRO-3, off on CPU), "
                              "off, layers (each decoder layer, one shared graph), model (the "
                              "whole decoder)")
    liger: str = _f("auto", "liger-kernel fused RMSNorm, RoPE, SwiGLU: auto (on CUDA when "
                            "installed and nothing is compiled), on, off")
    checkpointing: bool = _f(False, "activation checkpointing of each decoder layer (less "
                                    "memory, one more forward)")
    lora_rank: int = _f(0, "LoRA rank r (peft, the paper's Table 3): low-rank adapters on "
                           "model.lora_targets and the added tokens' embedding rows train, the "
                           "rest stays frozen; the export merges them (0 = full fine-tuning)")
    lora_alpha: float = _f(0.0, "LoRA alpha: the adapters are scaled by alpha / rank (0 = 2 x "
                                "model.lora_rank, the LLM-JEPA authors' setting)")
    lora_dropout: float = _f(0.0, "LoRA dropout on the adapters' input")
    lora_targets: str = _f("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                           "modules that get LoRA adapters: comma-separated module names (the "
                           "attention and MLP projections), or all-linear")


@dataclass
class DataConfig:
    train: str | None = _f(None, "tokenized store (python -m data_tools.preprocess), or a "
                                 "chat/group/text JSONL or .txt file, preprocessed into "
                                 "<run_dir>/data; empty = the embedded NL-RX-style dataset")
    eval: str | None = _f(None, "held-out chat-messages JSONL for the final generation eval; "
                                "empty = embedded test split (or none for a custom store)")
    tokenizer: str | None = _f(None, "tokenizer directory; empty = the store's tokenizer (for a "
                                     "JSONL/.txt data.train or the embedded data: model.init_from's "
                                     "tokenizer, else one trained on it in <run_dir>/data)")
    vocab_size: int = _f(8000, "SentencePiece vocabulary trained for a JSONL/.txt data.train "
                               "when data.tokenizer is empty")
    seq_len: int = _f(256, "tokens per packed row")
    micro_batch_rows: int = _f(8, "packed rows per micro-batch per rank")
    micro_batch_examples: int = _f(0, "examples per micro-batch per rank, packed into as many "
                                      "rows as they need (0 = budget by data.micro_batch_rows); "
                                      "arms of a comparison then see the same examples per step")
    balance_rows: bool = _f(True, "tight rows: each micro-batch's rows cut to its longest row and, "
                                  "with data.micro_batch_examples, its examples spread evenly over "
                                  "the rows they need (exact: the padding cut is attended by "
                                  "nothing; not on the compiled FlexAttention path, one shape); "
                                  "false = every row padded to data.seq_len, as before 2026-12-06")
    overflow: str = _f("drop", "examples longer than a row: drop or truncate")
    window: int = _f(1024, "best-fit packing window (examples)")
    lm_on_all: bool = _f(False, "pair examples: next-token loss on the text too, not only the code")
    embedded_examples: int = _f(6000, "embedded dataset: training pairs to generate")
    embedded_eval: int = _f(200, "embedded dataset: held-out pairs for the final eval (0 = none)")
    embedded_vocab: int = _f(512, "embedded dataset: SentencePiece vocabulary size")
    template: str = _f("plain", "pair prompt template: plain (text <sep> code </s>) or chat")
    on_bad: str = _f("error", "a raw JSONL data.train with a bad record (malformed JSON, an "
                              "empty view, ...): error (one line naming file and line) or skip "
                              "(skipped and counted, as data_tools --on-bad skip)")


@dataclass
class JepaConfig:
    k: int = _f(1, "k: number of predictor tokens <pred_1..k> appended to the text (0 = identity)")
    read_at: str = _f("end", "where Enc(view) is read: end (the view's end token) or last (its "
                             "last content token, as the paper's code reads Llama; predictors then "
                             "follow the content)")
    lbd: float = _f(1.0, "lambda: weight of the JEPA loss (0 = next-token only)")
    gamma: float = _f(1.0, "gamma: weight of the next-token loss")
    distance: str = _f("cosine", "JEPA distance: cosine (1 - cos), l2, mse, infonce")
    temperature: float = _f(0.07, "infonce temperature")
    reverse: bool = _f(False, "code predicts text instead of text predicting code")
    stopgrad_target: bool = _f(False, "no gradient through the target embedding Enc(Code)")
    jepa_ratio: float = _f(1.0, "fraction of examples that carry the JEPA loss (random dropout)")
    jepa_pairs: str = _f("next", "group examples: pairs vi->v(i+1) (next) or every i!=j (all)")
    mode: str = _f("single_pass", "single_pass (packed, one forward) or three_pass (paper's oracle)")
    kernels: str = _f("auto", "loss kernels: auto (Triton/liger where they run) or reference")
    sigreg: float = _f(0.0, "SIGReg weight: LeJEPA's anti-collapse regularizer on the JEPA "
                            "read-outs of the global micro-batch (0 = off)")
    sigreg_on: str = _f("both", "SIGReg acts on: both read-outs, pred (the Pred side) or target")
    sigreg_head: int = _f(0, "SIGReg after a learned linear projection to this many dimensions "
                             "(0 = on the read-outs themselves)")
    sigreg_slices: int = _f(256, "SIGReg random unit directions per step")
    sigreg_points: int = _f(17, "SIGReg quadrature points on t in [0, 3]")
    ce_chunk_size: int = _f(4096, "rows per chunk of the fused linear cross-entropy")
    objective: str = _f("views", "JEPA objective: views (LLM-JEPA, Pred(Enc(Text)) -> Enc(Code) "
                                 "between two views of an example) or stp (Semantic Tube "
                                 "Prediction: random spans of every document, any text, zero "
                                 "extra tokens; see megajepa/stp.py)")
    stp_spans: int = _f(1, "STP: spans drawn per document per step")
    stp_sampler: str = _f("start", "STP span sampler: start (start uniform, then the end uniform "
                                   "after it; the reference's default) or uniform (uniform over "
                                   "all spans)")
    stp_max_len: int = _f(0, "STP: longest span in tokens (0 = no limit)")
    stp_weighting: str = _f("none", "STP weight of each span by its and the rest's lengths: none, "
                                    "cosine_like, jaccard_like")
    stp_predictor: bool = _f(False, "STP: a learned linear D x D predictor on the rest embedding "
                                    "(checkpointed with the model, not exported)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "peak learning rate")
    schedule: str = _f("cosine", "decay after warm-up: cosine or linear (linear, warmup_steps 0, "
                                 "min_lr_ratio 0 is Hugging Face Trainer's default)")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of the peak (end of the decay)")
    warmup_steps: int = _f(-1, "linear warmup steps (-1 = 10% of train.steps, at most 1000)")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "gradient clipping (global norm; 0 = off)")
    grad_accum: int = _f(1, "gradient accumulation steps (micro-batches per optimizer step)")
    fused: str = _f("auto", "torch AdamW kernel: auto (fused on CUDA and CPU, measured fastest), "
                            "on (fused), off (torch's single-tensor loop, the CPU default before "
                            "2026-12-06); ZeRO optimizer offload always uses DeepSpeed's CPU Adam")


@dataclass
class TrainConfig:
    steps: int = _f(1000, "optimizer steps")
    epochs: int = _f(0, "epoch budget: passes over the training data, steps derived from the data "
                        "(0 = off: train.steps; give one of the two)")
    seed: int = _f(0, "seed for init, data order and JEPA dropout")
    run_dir: str = _f("runs/default", "where logs, checkpoints and the export go")
    ds_config: str = _f("auto", "DeepSpeed JSON (ZeRO stage etc.) or auto (zero1 where the model "
                                "states fit in 70% of GPU memory, else zero2, zero3, "
                                "zero3_offload; on CPU zero0 for one process, measured fastest, "
                                "zero1 for several or with on_nonfinite=skip); the run config "
                                "fills batch sizes, clipping and precision")
    precision: str = _f("auto", "auto (bf16 on CUDA, fp32 on CPU: bf16 weights there measured "
                                "no faster for the same loss curve), bf16, fp32")
    log_every: int = _f(10, "steps between logged metrics")
    save_every: int = _f(100, "steps between checkpoints (a final one is always written)")
    keep_checkpoints: int = _f(2, "complete checkpoints to keep")
    eval_every: int = _f(0, "steps between held-out loss + representation diagnostics (0 = off)")
    resume: str | None = _f(None, "auto (latest complete checkpoint in run_dir, if any) or a path")
    stop_at: int = _f(0, "stop with a checkpoint after this step, keeping the schedule of "
                         "train.steps (split a run across jobs; 0 = off)")
    on_nonfinite: str = _f("stop", "non-finite loss: stop (exit 3) or skip (drop the update)")
    peak_tflops: float = _f(0.0, "device peak TFLOP/s for MFU (0 = known GPUs only)")
    export: bool = _f(True, "export a Hugging Face folder at the end")
    final_eval: bool = _f(True, "generation eval on the held-out pairs at the end")
    eval_task: str = _f("nlrx", "final eval task: nlrx, gsm8k, sql, classify")
    eval_limit: int = _f(200, "held-out pairs for the final generation eval")
    max_new_tokens: int = _f(64, "generation length for the final eval")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    jepa: JepaConfig = field(default_factory=JepaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


ALIASES = {
    "k": "jepa.k", "lambda": "jepa.lbd", "lbd": "jepa.lbd", "gamma": "jepa.gamma",
    "seed": "train.seed", "steps": "train.steps", "lr": "optim.lr", "run-dir": "train.run_dir",
    "resume": "train.resume", "preset": "model.preset", "init-from": "model.init_from",
    "jepa-mode": "jepa.mode", "ds-config": "train.ds_config",
}
CHOICES = {
    "model.attn": ("auto", "sdpa", "flex_attention", "eager"),
    "model.compile": ("auto", "off", "layers", "model"),
    "model.liger": ("auto", "on", "off"),
    "data.overflow": ("drop", "truncate"),
    "data.template": ("plain", "chat"),
    "data.on_bad": ("error", "skip"),
    "jepa.distance": ("cosine", "l2", "mse", "infonce"),
    "jepa.jepa_pairs": ("next", "all"),
    "jepa.read_at": ("end", "last"),
    "jepa.sigreg_on": ("both", "pred", "target"),
    "jepa.objective": ("views", "stp"),
    "jepa.stp_sampler": ("start", "uniform"),
    "jepa.stp_weighting": ("none", "cosine_like", "jaccard_like"),
    "optim.schedule": ("cosine", "linear"),
    "optim.fused": ("auto", "on", "off"),
    "jepa.mode": ("single_pass", "three_pass"),
    "jepa.kernels": ("auto", "reference"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.on_nonfinite": ("stop", "skip"),
    "train.eval_task": ("nlrx", "gsm8k", "sql", "classify"),
}


def _sections(cfg: Config):
    for sec in dataclasses.fields(cfg):
        yield sec.name, getattr(cfg, sec.name)


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _caster(tp):
    if tp is bool:
        return _parse_bool
    if tp in (int, float):
        return tp
    return lambda s: None if s in ("", "none", "None", "null") else s


def _types(section_obj) -> dict:
    return get_type_hints(type(section_obj))


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line (``pretrain.py: error: ...``, exit 2), not the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pretrain.py",
        description="LLM-JEPA pretraining: gamma * next-token CE + lambda * JEPA distance, one "
                    "forward pass over packed sequences, DeepSpeed ZeRO. With no flags: a tiny "
                    "model on the embedded NL-RX-style dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file with any of the sections below")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by the deepspeed launcher")
    for name, sec in _sections(Config()):
        group = p.add_argument_group(name)
        hints = _types(sec)
        for f in dataclasses.fields(sec):
            key = f"{name}.{f.name}"
            tp = hints[f.name]
            base = tp if tp in (bool, int, float, str) else str
            flags = [f"--{key}"] + [f"--{a}" for a, tgt in ALIASES.items() if tgt == key]
            group.add_argument(*flags, dest=key, type=_caster(base), default=argparse.SUPPRESS,
                               choices=CHOICES.get(key), metavar=None if key in CHOICES else base.__name__.upper(),
                               help=f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%"))
    return p


def _apply(cfg: Config, key: str, value: Any, source: str) -> None:
    section, _, name = key.partition(".")
    sec = getattr(cfg, section, None)
    if sec is None or name not in {f.name for f in dataclasses.fields(sec)}:
        raise ValueError(f"{source}: unknown setting {key!r}")
    value = _coerce(_types(sec)[name], value, key, source)
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{source}: {key} must be one of {CHOICES[key]}, got {value!r}")
    setattr(sec, name, value)


def _coerce(tp, value, key: str, source: str):
    """``value`` as the field's type, or a ValueError naming ``source`` and ``key``. Numbers
    written as strings are taken (PyYAML reads ``1e-3`` as a string: YAML 1.1 wants ``1.0e-3``);
    a boolean is not a number; only the ``X | None`` fields take null."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args else tp
    if value is None:
        if optional:
            return None
    elif base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            with contextlib.suppress(argparse.ArgumentTypeError):
                return _parse_bool(value)
    elif base in (int, float):
        if isinstance(value, bool):
            pass
        elif isinstance(value, (int, float)) and (base is float or isinstance(value, int)):
            return base(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                return base(value)
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # run_dir: 2024, preset: 125 -> the text the user wrote
    else:
        return value
    name = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(base, base.__name__)
    raise ValueError(f"{source}: {key} must be {name}{' or null' if optional else ''}, got {value!r}")


def load(argv=None) -> Config:
    """Defaults, then ``--config`` YAML, then flags."""
    args = vars(build_parser().parse_args(argv))
    cfg = Config()
    path = args.pop("config", None)
    args.pop("local_rank", None)
    explicit = set(args)  # what the user gave: every flag, and YAML values off their defaults
    defaults = Config()
    if path:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ValueError(f"--config {path}: no such file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            what = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ValueError(f"{where}: invalid YAML: {what}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: expected a mapping of sections")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ValueError(f"{path}: section {section!r} must be a mapping")
            for name, value in values.items():
                _apply(cfg, f"{section}.{name}", value, path)
                if getattr(getattr(cfg, section), name) != getattr(getattr(defaults, section), name):
                    explicit.add(f"{section}.{name}")
    from_file = explicit - set(args)  # set in the YAML and not overridden by a flag
    for key, value in args.items():
        _apply(cfg, key, value, "command line")
    try:
        validate(cfg, explicit=explicit)
    except ValueError as e:
        named = [k for k in sorted(from_file) if re.search(rf"\b{re.escape(k)}\b", str(e))]
        if named:  # say where the offending values came from
            raise ValueError(f"{e} ({', '.join(named)} set in {path})") from None
        raise
    return cfg


def from_dict(data: dict) -> Config:
    cfg = Config()
    for section, values in data.items():
        for name, value in values.items():
            _apply(cfg, f"{section}.{name}", value, "saved config")
    return cfg


def read_saved(tag_dir: str) -> Config:
    """The run config a checkpoint tag was saved with (its ``config.yaml``)."""
    with open(os.path.join(tag_dir, "config.yaml")) as fh:
        return from_dict(yaml.safe_load(fh) or {})


def validate(cfg: Config, explicit=frozenset()) -> None:
    """Impossible settings, caught before any work. ``explicit``: the keys the user gave
    (``load`` passes every flag and the YAML values that differ from the defaults, so a saved
    ``config.yaml`` loads again), for the rules about what was asked rather than what resulted:
    ``--train.epochs 0``, and ``train.steps`` given together with ``train.epochs``."""
    m, d, j, o, t = cfg.model, cfg.data, cfg.jepa, cfg.optim, cfg.train
    errors = []
    if m.init_from is None and m.preset not in PRESETS:
        errors.append(f"model.preset {m.preset!r} is unknown; choose one of {sorted(PRESETS)} "
                      "or pass --model.init_from <hf_dir>")
    errors.extend(_lora_errors(m))
    if j.k < 0:
        errors.append("jepa.k must be >= 0")
    if d.seq_len < 8:
        errors.append(f"data.seq_len={d.seq_len} is too small; use at least a few dozen tokens")
    if d.micro_batch_rows < 1 or o.grad_accum < 1:
        errors.append("data.micro_batch_rows and optim.grad_accum must be >= 1")
    if not 0.0 <= j.jepa_ratio <= 1.0:
        errors.append(f"jepa.jepa_ratio={j.jepa_ratio} must be in [0, 1]")
    if j.lbd < 0 or j.gamma < 0:
        errors.append("jepa.lbd and jepa.gamma must be >= 0")
    if j.lbd == 0 and j.gamma == 0:
        errors.append("jepa.lbd and jepa.gamma are both 0: nothing to train")
    if j.temperature <= 0:
        errors.append("jepa.temperature must be > 0")
    if t.steps < 1:
        errors.append("train.steps must be >= 1")
    if t.epochs < 0 or (t.epochs == 0 and "train.epochs" in explicit):
        errors.append(f"train.epochs={t.epochs}: an epoch budget needs at least 1 epoch "
                      "(leave train.epochs out to budget by train.steps)")
    if t.epochs > 0 and "train.steps" in explicit:
        errors.append(f"train.steps={t.steps} and train.epochs={t.epochs} are both given: an "
                      "epoch budget derives the steps from the data; give only one")
    if d.micro_batch_examples < 0:
        errors.append(f"data.micro_batch_examples={d.micro_batch_examples} must be >= 0 "
                      "(0 = budget by data.micro_batch_rows)")
    if j.sigreg < 0:
        errors.append(f"jepa.sigreg={j.sigreg} must be >= 0 (0 = off)")
    if j.sigreg > 0 and j.lbd == 0:
        errors.append("jepa.sigreg acts on the JEPA read-outs, which jepa.lbd=0 does not build; "
                      "set jepa.lbd > 0 or jepa.sigreg 0")
    if j.sigreg > 0 and j.mode != "single_pass":
        errors.append("jepa.sigreg reads the single pass's hidden states; use jepa.mode single_pass")
    if j.sigreg_slices < 1 or j.sigreg_points < 2 or j.sigreg_head < 0:
        errors.append("jepa.sigreg_slices must be >= 1, jepa.sigreg_points >= 2 and "
                      "jepa.sigreg_head >= 0")
    if j.objective == "stp":
        errors.extend(_stp_errors(j))
    if o.lr <= 0 or not 0 <= o.min_lr_ratio <= 1:
        errors.append("optim.lr must be > 0 and optim.min_lr_ratio in [0, 1]")
    if o.warmup_steps < -1 or (o.warmup_steps > t.steps and t.epochs == 0):
        errors.append(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps={t.steps}]")
    if t.save_every < 1 or t.log_every < 1:
        errors.append("train.save_every and train.log_every must be >= 1")
    if len(errors) == 1:
        raise ValueError(f"invalid configuration: {errors[0]}")  # one error, one line
    if errors:
        raise ValueError("invalid configuration:\n  - " + "\n  - ".join(errors))


def _lora_errors(m: ModelConfig) -> list:
    errors = []
    if m.lora_rank < 0:
        errors.append(f"model.lora_rank={m.lora_rank} must be >= 0 (0 = full fine-tuning)")
    if m.lora_alpha < 0:
        errors.append(f"model.lora_alpha={m.lora_alpha} must be >= 0 (0 = 2 x model.lora_rank)")
    if not 0 <= m.lora_dropout < 1:
        errors.append(f"model.lora_dropout={m.lora_dropout} must be in [0, 1)")
    if m.lora_rank > 0 and not lora_targets(m):
        errors.append("model.lora_targets is empty: name the modules that get adapters "
                      "(q_proj,k_proj,...) or all-linear")
    return errors


def lora_targets(m: ModelConfig) -> list | str:
    """``model.lora_targets`` as peft's ``target_modules``: a list of names, or ``all-linear``."""
    text = (m.lora_targets or "").strip()
    if text == "all-linear":
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def stp_spec(j: JepaConfig):
    """The :class:`megajepa.stp.StpSpec` of ``jepa.stp_*`` (``stp_max_len`` 0 = no limit)."""
    return StpSpec(spans=j.stp_spans, sampler=j.stp_sampler, max_len=j.stp_max_len or None,
                   weighting=j.stp_weighting, predictor=j.stp_predictor)


def _stp_errors(j: JepaConfig) -> list:
    """What ``jepa.objective=stp`` cannot run with (STP reads the spans of the next-token
    rows in the single pass, with the cosine distance and gradients into both sides)."""
    errors = []
    if j.stp_spans < 1:
        errors.append(f"jepa.stp_spans={j.stp_spans} must be >= 1 (spans per document)")
    if j.stp_max_len < 0:
        errors.append(f"jepa.stp_max_len={j.stp_max_len} must be >= 0 (0 = no limit)")
    if not errors:
        try:
            stp_spec(j)
        except ValueError as e:
            errors.append(f"jepa.objective=stp: {e}")
    refused = [("jepa.mode", j.mode, "single_pass", "STP reads the single pass's hidden states"),
               ("jepa.distance", j.distance, "cosine", "the STP loss is 1 - cos"),
               ("jepa.stopgrad_target", j.stopgrad_target, False, "STP has no target view"),
               ("jepa.jepa_ratio", j.jepa_ratio, 1.0, "STP runs on every document"),
               ("jepa.sigreg", j.sigreg, 0.0, "SIGReg acts on the read-outs of views")]
    for key, value, needed, why in refused:
        if value != needed:
            errors.append(f"jepa.objective=stp needs {key}={needed}, got {value}: {why}")
    return errors


def describe(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
