"""Model construction: Llama-shaped presets with random init, or a local HF checkpoint.

``build_model(preset=..., vocab_size=...)`` makes a ``LlamaForCausalLM`` from a preset shape
(vocabulary from the tokenizer) with a seeded random init; ``build_model(init_from=dir)``
loads any local Hugging Face causal LM. Predictor tokens ``<pred_1> .. <pred_K>`` live in the
vocabulary: a megajepa tokenizer has them already; for a foreign tokenizer
``data_tools.tokenizer.load_tokenizer`` adds them and :func:`resize_for_tokenizer` grows the
embeddings to match.

Under ZeRO-3 pass ``init_context=deepspeed.zero.Init(...)`` so parameters are partitioned
as they are created.
"""
from __future__ import annotations

import contextlib
import os

import torch

# Llama shapes. "tiny" is for tests and the CPU default; the others follow the published
# Llama-3.x shapes (Llama-3.2 ties input and output embeddings, Llama-3.1-8B does not).
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE),
}


def resize_for_tokenizer(model, tokenizer) -> None:
    """Grow (never shrink) the embeddings to cover the tokenizer; new rows start at the
    mean of the old ones (transformers' mean resizing)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def llama_config(preset: str, vocab_size: int, *, attn_implementation: str = "sdpa",
                 **overrides):
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset], vocab_size=vocab_size, **overrides)
    config = LlamaConfig(**cfg)
    config._attn_implementation = attn_implementation
    return config


def build_model(*, preset: str | None = None, vocab_size: int | None = None,
                init_from: str | None = None, seed: int = 0, attn_implementation: str = "sdpa",
                dtype: torch.dtype = torch.float32, init_context=None, **overrides):
    """A causal LM from a preset (random init seeded by ``seed``) or a local HF checkpoint."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    ctx = init_context if init_context is not None else contextlib.nullcontext()
    if init_from is not None:
        if not os.path.isdir(init_from) or not os.path.exists(os.path.join(init_from, "config.json")):
            raise FileNotFoundError(
                f"--init-from {init_from!r} is not a local Hugging Face model directory "
                "(no config.json); download it first or point at an exported checkpoint")
        with ctx:
            return AutoModelForCausalLM.from_pretrained(
                init_from, dtype=dtype, attn_implementation=attn_implementation)
    if preset is None or vocab_size is None:
        raise ValueError("build_model needs preset and vocab_size, or init_from")
    config = llama_config(preset, vocab_size, attn_implementation=attn_implementation,
                          **overrides)
    torch.manual_seed(seed)
    with ctx:
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def num_parameters(model, *, exclude_embeddings: bool = False) -> int:
    """Parameter count (ZeRO-3 aware: uses ``ds_numel`` when parameters are partitioned)."""
    seen, total = set(), 0
    emb = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    if out is not None:
        emb.add(id(out.weight))
    for p in model.parameters():
        if id(p) in seen or (exclude_embeddings and id(p) in emb):
            continue
        seen.add(id(p))
        total += getattr(p, "ds_numel", p.numel())
    return total
