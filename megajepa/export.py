"""Export a training checkpoint to a Hugging Face folder.

    python -m megajepa.export <checkpoint> <out_dir> [--dtype auto|bf16|fp16|fp32] [--overwrite]

``<checkpoint>`` is a run directory, its ``checkpoints/`` directory (the latest complete
checkpoint is used) or one ``step_*`` directory. ZeRO-1/2/3 shards are consolidated with
DeepSpeed's ``zero_to_fp32``; a stage-0 checkpoint holds the whole model already. The folder
gets the weights (safetensors), ``config.json``, ``generation_config.json`` and the
tokenizer, so ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load it and ``generate`` stops at the tokenizer's end-of-sequence token. It is written to a
temporary folder and renamed into place: a failed export leaves no partial folder.

A model trained with the plain prompt template gets a chat template that renders exactly the
token ids training saw (:func:`plain_chat_template`), so ``tokenizer.apply_chat_template(
[{"role": "user", "content": ...}], add_generation_prompt=True)`` is the prompt::

    [<s>] enc(user) [<sep>]   ->  the model continues with  enc(assistant) [</s>]

A model trained with the chat template keeps its tokenizer's own chat template.

A LoRA run (``model.lora_rank``) is exported merged: peft's ``merge_and_unload`` folds the
adapters and the trained token rows into plain weights, which need no peft to load.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from data_tools.store import open_store
from data_tools.templates import SEP_TOKEN, pair_views, prompt_ids
from data_tools.tokenizer import load_tokenizer
from megajepa import checkpoint
from megajepa.cli import HelpFormatter
from megajepa.config import read_saved
from megajepa.console import prepare, quiet
from megajepa.data import train_store_path
from megajepa.model import apply_lora, llama_config, lora_token_ids
from megajepa.pretrained import config_of

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_PREFIX = "lm."  # JepaModule wraps the causal LM
_NOT_LM = ("stp_predictor.", "sigreg_head.")  # JepaModule's training-only modules: not part of the export

DESCRIPTION = """\
Export a training checkpoint to a Hugging Face folder: weights, config, and the
tokenizer with a chat template that renders training's prompt, so plain
transformers (AutoModelForCausalLM, AutoTokenizer.apply_chat_template) load it
and generate from it. ZeRO-1/2/3 shards are consolidated; the folder is written
under a temporary name and renamed into place: a failed export leaves nothing."""

# Probe pairs for the chat template check: words, symbols, doubled and trailing spaces, a
# tab, a newline, non-ASCII. Each must tokenize exactly as training's layout does.
_PROBES = (("lines with the word dog", ".*dog.*"), ("x", "y"),
           ("two  spaces, a tab\there and a trailing space ", "([A-Z])|(\\b[0-9]{3,}\\b)"),
           ("Line one\nline two", "(.*[aeiou].*){2,}"), ("naïve café, 42%!", "~(.*x.*)&(..)"))
_PROBE_SYSTEM = "Convert natural language to regular expression."


def consolidated_state_dict(root: str, tag: str) -> dict:
    """fp32 state dict of the causal LM in checkpoint ``root/tag`` (:func:`checkpoint.verify`-ed
    first: ``zero_to_fp32`` unpickles DeepSpeed's files in full)."""
    path = os.path.join(root, tag)
    checkpoint.verify(path)
    stage0 = os.path.join(path, "mp_rank_00_model_states.pt")
    has_optim_shards = any("optim_states" in f for f in os.listdir(path))
    if has_optim_shards:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with quiet("zero_to_fp32"):  # its prints and progress bar are chatter
            state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
        if os.path.exists(stage0):  # ZeRO-1 keeps frozen parameters (LoRA's base) only here
            frozen = checkpoint.torch_load(stage0)["module"]
            state.update({k: v for k, v in frozen.items() if k not in state})
    elif os.path.exists(stage0):
        state = checkpoint.torch_load(stage0)["module"]
    else:
        raise FileNotFoundError(f"{path} holds no DeepSpeed model states")
    return {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v.float() for k, v in state.items()
            if not k.startswith(_NOT_LM)}


def _skeleton(cfg, vocab_size: int, run_dir: str):
    if cfg.model.init_from:  # a folder, a hub name or a GGUF file (its run's conversion)
        config = config_of(cfg.model.init_from, run_dir)
        config.vocab_size = vocab_size
        config._attn_implementation = None  # the family's default: sdpa, or eager (Gemma-2)
        return AutoModelForCausalLM.from_config(config)
    return LlamaForCausalLM(llama_config(cfg.model.preset, vocab_size, attn_implementation="sdpa"))


_LORA_EMBED = "model.embed_tokens.token_adapter.base_layer.weight"  # peft's trainable tokens


def _lora_wrap(model, cfg, tok, run_dir: str):
    """The ``PeftModel`` of a ``model.lora_rank`` run around ``model``: the same adapters and
    trainable token rows (the rows the run added to its checkpoint's vocabulary)."""
    base_rows = (config_of(cfg.model.init_from, run_dir).vocab_size if cfg.model.init_from
                 else model.get_input_embeddings().num_embeddings)
    return apply_lora(model, cfg.model, lora_token_ids(tok, base_rows), seed=cfg.train.seed)


def _train_store(cfg, tag_dir: str) -> str:
    """The store the run trained on (its run dir is two levels above the tag)."""
    return train_store_path(cfg, os.path.dirname(os.path.dirname(tag_dir)))


def _tokenizer_dir(cfg, store_dir: str) -> str:
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    return open_store(store_dir).tokenizer_path


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _render(bos, sep: str, eos: str, system_in_plain: bool) -> str:
    """Jinja source of the plain layout: ``bos [system \\n] (user sep | assistant eos)*``."""
    tail = ("{%- elif m['role'] == 'system' -%}{{ m['content'] ~ '\\n' }}"
            if system_in_plain else "")
    return ("{{- " + (_jinja_str(bos) if bos else "''") + " -}}"
            "{%- for m in messages -%}"
            "{%- if m['role'] == 'user' -%}{{ m['content'] }}" + sep
            + "{%- elif m['role'] == 'assistant' -%}{{ m['content'] }}" + eos
            + tail + "{%- endif -%}{%- endfor -%}")


def _chat_ids(tokenizer, messages, generation: bool) -> list:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation,
                                        tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return [int(t) for t in out]


def _metaspaces(pre) -> list:
    """The Metaspace pre-tokenizers in ``pre`` (a Sequence is walked)."""
    from tokenizers import pre_tokenizers

    if isinstance(pre, pre_tokenizers.Metaspace):
        return [pre]
    out = []
    if isinstance(pre, pre_tokenizers.Sequence):
        i = 0
        while True:
            try:
                out += _metaspaces(pre[i])
            except IndexError:
                return out
            i += 1
    return out


def _reproduces(tokenizer, expected, system, system_in_plain: bool) -> bool:
    """The chat template and the tokenizer give training's ids on every probe pair."""
    head = [{"role": "system", "content": system}] if system else []
    for (user, answer), (prompt, (text, code)) in zip(_PROBES, expected):
        turn = head + [{"role": "user", "content": user}]
        if (_chat_ids(tokenizer, turn, True) != prompt
                or prompt_ids(tokenizer, user, system=system,
                              system_in_plain=system_in_plain) != prompt
                or _chat_ids(tokenizer, turn + [{"role": "assistant", "content": answer}],
                             False) != text + code):
            return False
    return True


def plain_chat_template(tokenizer, *, system_in_plain: bool = False):
    """Set a chat template on ``tokenizer`` that reproduces ``data_tools.templates``' plain
    layout token for token, and return it; None (tokenizer unchanged) when none does.

    A chat template is rendered to one string, so every text after a special token is
    tokenized as a continuation. A SentencePiece tokenizer (the converted kind, Metaspace
    with ``prepend_scheme="first"``) gives the word-start marker only to the first
    segment, while training encodes each view on its own (``▁lines`` vs ``l ines``); for
    those the exported tokenizer prepends it to every segment (``"always"``), which changes
    nothing for a text encoded alone unless it starts with whitespace. Candidates are checked
    on probe pairs: prompt and prompt + answer ids must equal training's.
    """
    system = _PROBE_SYSTEM if system_in_plain else None
    # training's ids, before anything below changes the tokenizer (the text view is the prompt)
    views = [pair_views(tokenizer, u, a, system=system, system_in_plain=system_in_plain)
             for u, a in _PROBES]
    expected = [(text, (text, code)) for text, code in views]
    old = tokenizer.chat_template
    tokenizer.chat_template = _render(tokenizer.bos_token, SEP_TOKEN, tokenizer.eos_token,
                                      system_in_plain)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    firsts = [m for m in (_metaspaces(backend.pre_tokenizer) if backend else [])
              if str(m.prepend_scheme) == "first"]
    for always in ([False, True] if firsts else [False]):
        for m in firsts:
            m.prepend_scheme = "always" if always else "first"
        if _reproduces(tokenizer, expected, system, system_in_plain):
            return tokenizer.chat_template
    for m in firsts:
        m.prepend_scheme = "first"
    tokenizer.chat_template = old
    return None


def _system_in_plain(store_dir: str) -> bool:
    """Whether the training store put the system prompt into the plain prompt."""
    try:
        return bool(open_store(store_dir).manifest["source"].get("system_in_plain", False))
    except Exception:  # noqa: BLE001 - a store that moved: the default layout
        return False


def export(checkpoint_path: str, out_dir: str, *, dtype: str = "auto",
           overwrite: bool = False) -> str:

    if not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"checkpoint {checkpoint_path}: does not exist")
    root, tag = checkpoint.resolve_checkpoint(checkpoint_path)
    tag_dir = os.path.join(root, tag)
    cfg = read_saved(tag_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    if dtype == "auto":
        dtype = "bf16" if cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and torch.cuda.is_available()) else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}")

    store_dir = _train_store(cfg, tag_dir)
    tok_dir = _tokenizer_dir(cfg, store_dir)
    tok, _ = load_tokenizer(tok_dir)
    state = consolidated_state_dict(root, tag)
    run_dir = os.path.dirname(os.path.dirname(tag_dir))
    lora = cfg.model.lora_rank > 0
    vocab = state[_LORA_EMBED if _LORA_EMBED in state else "model.embed_tokens.weight"].shape[0]
    model = target = _skeleton(cfg, vocab, run_dir)
    if lora:  # wrapped as training wrapped it, so the state dict's keys fit
        target = _lora_wrap(model, cfg, tok, run_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.startswith("lm_head.")} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {tag_dir} does not match the model: missing "
                           f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    if lora:
        model = target.merge_and_unload()  # adapters and token rows folded into plain weights
    if tied:
        model.tie_weights()
    model.to(DTYPES[dtype])
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config, name, getattr(tok, name))
        setattr(model.generation_config, name, getattr(tok, name))
    if cfg.data.template == "plain" and plain_chat_template(
            tok, system_in_plain=_system_in_plain(store_dir)) is None:
        print(f"warning: no chat template written to {out_dir}: this tokenizer's plain prompt "
              "cannot be rendered by one; build prompts with data_tools.templates.prompt_ids",
              file=sys.stderr)

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megajepa.export", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a run dir, its checkpoints/ dir (the latest complete "
                                      "checkpoint is used), or one step_* dir")
    p.add_argument("out_dir", help="Hugging Face folder to write")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights dtype; auto = bf16 if trained in bf16, else fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    prepare()  # no DeepSpeed accelerator warning, no transformers progress bars
    try:
        out = export(a.checkpoint, a.out_dir, dtype=a.dtype, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {a.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
