"""Export a training checkpoint to a Hugging Face folder.

    python -m megajepa.export <checkpoint> <out_dir> [--dtype auto|bf16|fp16|fp32] [--overwrite]

``<checkpoint>`` is a run directory, its ``checkpoints/`` directory (the latest complete
checkpoint is used) or one ``step_*`` directory. ZeRO-1/2/3 shards are consolidated with
DeepSpeed's ``zero_to_fp32``; a stage-0 checkpoint holds the whole model already. The folder
gets the weights (safetensors), ``config.json``, ``generation_config.json`` and the
tokenizer, so ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load it and ``generate`` stops at the tokenizer's end-of-sequence token. It is written to a
temporary folder and renamed into place: a failed export leaves no partial folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch
import yaml

from megajepa import checkpoint
from megajepa.config import from_dict

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_PREFIX = "lm."  # JepaModule wraps the causal LM


def consolidated_state_dict(root: str, tag: str) -> dict:
    """fp32 state dict of the causal LM in checkpoint ``root/tag``."""
    path = os.path.join(root, tag)
    stage0 = os.path.join(path, "mp_rank_00_model_states.pt")
    has_optim_shards = any("optim_states" in f for f in os.listdir(path))
    if has_optim_shards:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    elif os.path.exists(stage0):
        state = torch.load(stage0, map_location="cpu", weights_only=False)["module"]
    else:
        raise FileNotFoundError(f"{path} holds no DeepSpeed model states")
    return {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v.float() for k, v in state.items()}


def _skeleton(cfg, vocab_size: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    from megajepa.model import llama_config

    if cfg.model.init_from:
        config = AutoConfig.from_pretrained(cfg.model.init_from)
        config.vocab_size = vocab_size
        config._attn_implementation = "sdpa"
        return AutoModelForCausalLM.from_config(config)
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM(llama_config(cfg.model.preset, vocab_size, attn_implementation="sdpa"))


def _tokenizer_dir(cfg, tag_dir: str) -> str:
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    from data_tools.store import open_store
    if cfg.data.train:
        return open_store(cfg.data.train).tokenizer_path
    run_dir = os.path.dirname(os.path.dirname(tag_dir))
    return os.path.join(run_dir, "embedded", "train_store", "tokenizer")


def export(checkpoint_path: str, out_dir: str, *, dtype: str = "auto",
           overwrite: bool = False) -> str:
    from data_tools.tokenizer import load_tokenizer

    root, tag = checkpoint.resolve_checkpoint(checkpoint_path)
    tag_dir = os.path.join(root, tag)
    with open(os.path.join(tag_dir, "config.yaml")) as fh:
        cfg = from_dict(yaml.safe_load(fh))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    if dtype == "auto":
        dtype = "bf16" if cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and torch.cuda.is_available()) else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}")

    tok_dir = _tokenizer_dir(cfg, tag_dir)
    tok, _ = load_tokenizer(tok_dir)
    state = consolidated_state_dict(root, tag)
    vocab = state["model.embed_tokens.weight"].shape[0]
    model = _skeleton(cfg, vocab)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {tag_dir} does not match the model: missing "
                           f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    if tied:
        model.tie_weights()
    model.to(DTYPES[dtype])
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config, name, getattr(tok, name))
        setattr(model.generation_config, name, getattr(tok, name))

    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if os.path.exists(out_dir):
            old = f"{out_dir}.old{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m megajepa.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run dir, its checkpoints/ dir, or a step_* dir")
    p.add_argument("out_dir", help="Hugging Face folder to write")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights dtype (auto: bf16 if trained in bf16, else fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    a = p.parse_args(argv)
    try:
        out = export(a.checkpoint, a.out_dir, dtype=a.dtype, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {a.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
