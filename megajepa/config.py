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
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    preset: str = _f("tiny", "model shape for random init: tiny, small, 125m, llama-3.2-1b, "
                              "llama-3.2-3b, llama-3.1-8b")
    init_from: str | None = _f(None, "local Hugging Face checkpoint to fine-tune (overrides preset)")
    attn: str = _f("auto", "attention backend: auto (flex_attention on CUDA, sdpa on CPU), "
                           "sdpa, flex_attention, eager")


@dataclass
class DataConfig:
    train: str | None = _f(None, "tokenized store (python -m data_tools.preprocess); "
                                 "empty = the embedded NL-RX-style dataset")
    eval: str | None = _f(None, "held-out chat-messages JSONL for the final generation eval; "
                                "empty = embedded test split (or none for a custom store)")
    tokenizer: str | None = _f(None, "tokenizer directory; empty = the store's tokenizer")
    seq_len: int = _f(256, "tokens per packed row")
    micro_batch_rows: int = _f(8, "packed rows per micro-batch per rank")
    overflow: str = _f("drop", "examples longer than a row: drop or truncate")
    window: int = _f(1024, "best-fit packing window (examples)")
    lm_on_all: bool = _f(False, "pair examples: next-token loss on the text too, not only the code")
    embedded_examples: int = _f(6000, "embedded dataset: training pairs to generate")
    embedded_eval: int = _f(200, "embedded dataset: held-out pairs for the final eval")
    embedded_vocab: int = _f(512, "embedded dataset: SentencePiece vocabulary size")
    template: str = _f("plain", "pair prompt template: plain (text <sep> code </s>) or chat")


@dataclass
class JepaConfig:
    k: int = _f(1, "k: number of predictor tokens <pred_1..k> appended to the text (0 = identity)")
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
    ce_chunk_size: int = _f(4096, "rows per chunk of the fused linear cross-entropy")


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of the peak (cosine decay)")
    warmup_steps: int = _f(-1, "linear warmup steps (-1 = 10% of train.steps, at most 1000)")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "gradient clipping (global norm; 0 = off)")
    grad_accum: int = _f(1, "gradient accumulation steps (micro-batches per optimizer step)")


@dataclass
class TrainConfig:
    steps: int = _f(1000, "optimizer steps")
    seed: int = _f(0, "seed for init, data order and JEPA dropout")
    run_dir: str = _f("runs/default", "where logs, checkpoints and the export go")
    ds_config: str = _f("ds_configs/zero1.json", "DeepSpeed JSON (ZeRO stage etc.); the run config "
                                                 "fills batch sizes, clipping and precision")
    precision: str = _f("auto", "auto (bf16 on CUDA, fp32 on CPU), bf16, fp32")
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
    "data.overflow": ("drop", "truncate"),
    "data.template": ("plain", "chat"),
    "jepa.distance": ("cosine", "l2", "mse", "infonce"),
    "jepa.jepa_pairs": ("next", "all"),
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    tp = _types(sec)[name]
    if value is not None and tp in (int, float, bool) and not isinstance(value, tp):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif tp is bool and isinstance(value, str):
            value = _parse_bool(value)
        else:
            raise ValueError(f"{source}: {key} must be {tp.__name__}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{source}: {key} must be one of {CHOICES[key]}, got {value!r}")
    setattr(sec, name, value)


def load(argv=None) -> Config:
    """Defaults, then ``--config`` YAML, then flags."""
    args = vars(build_parser().parse_args(argv))
    cfg = Config()
    path = args.pop("config", None)
    args.pop("local_rank", None)
    if path:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ValueError(f"--config {path}: no such file") from None
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: expected a mapping of sections")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ValueError(f"{path}: section {section!r} must be a mapping")
            for name, value in values.items():
                _apply(cfg, f"{section}.{name}", value, path)
    for key, value in args.items():
        _apply(cfg, key, value, "command line")
    validate(cfg)
    return cfg


def from_dict(data: dict) -> Config:
    cfg = Config()
    for section, values in data.items():
        for name, value in values.items():
            _apply(cfg, f"{section}.{name}", value, "saved config")
    return cfg


def validate(cfg: Config) -> None:
    """Impossible settings, caught before any work."""
    from megajepa.model import PRESETS

    m, d, j, o, t = cfg.model, cfg.data, cfg.jepa, cfg.optim, cfg.train
    errors = []
    if m.init_from is None and m.preset not in PRESETS:
        errors.append(f"model.preset {m.preset!r} is unknown; choose one of {sorted(PRESETS)} "
                      "or pass --model.init_from <hf_dir>")
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
    if o.lr <= 0 or not 0 <= o.min_lr_ratio <= 1:
        errors.append("optim.lr must be > 0 and optim.min_lr_ratio in [0, 1]")
    if o.warmup_steps < -1 or o.warmup_steps > t.steps:
        errors.append(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps={t.steps}]")
    if t.save_every < 1 or t.log_every < 1:
        errors.append("train.save_every and train.log_every must be >= 1")
    if errors:
        raise ValueError("invalid configuration:\n  - " + "\n  - ".join(errors))


def warmup_steps(cfg: Config) -> int:
    w = cfg.optim.warmup_steps
    return min(1000, cfg.train.steps // 10) if w == -1 else w


def describe(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
