"""Model construction: Llama-shaped presets with random init, or a pretrained checkpoint.

``build_model(preset=..., vocab_size=...)`` makes a ``LlamaForCausalLM`` from a preset shape
(vocabulary from the tokenizer) with a seeded random init; ``build_model(init_from=dir)``
loads any local Hugging Face causal LM (a hub name or a GGUF file is made a local folder
first by :mod:`megajepa.pretrained`, which ``megajepa.data.prepare`` calls). Predictor
tokens ``<pred_1> .. <pred_K>`` live in the vocabulary: a megajepa tokenizer has them
already; for a foreign tokenizer ``data_tools.tokenizer.load_tokenizer`` adds them and
:func:`resize_for_tokenizer` grows the embeddings to match.

Under ZeRO-3 pass ``init_context=deepspeed.zero.Init(...)`` so parameters are partitioned
as they are created.

:func:`optimize` applies the speed options of the ``model`` config section to a built model,
in place, before DeepSpeed wraps it::

    liger          liger-kernel's fused RMSNorm, RoPE and SwiGLU (CUDA only)
    checkpointing  activation checkpointing of each decoder layer
    compile        torch.compile of each decoder layer ("layers": one graph, reused by all
                   layers) or of the whole decoder ("model")

The attention mask (the FlexAttention ``BlockMask`` or the dense SDPA mask) is built once per
forward by ``objective.hidden_states`` and passed to every layer, so a compiled layer takes it
as an input. Tests: a compiled model gives the eager loss and gradients through
``objective.forward``; bad settings fail with one line naming the flag.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings

import torch

from data_tools.templates import SEP_TOKEN
from data_tools.tokenizer import pred_ids
from megajepa import objective, pretrained
from megajepa.config import lora_targets
from megajepa.presets import PRESETS
from megajepa.ops.linear_ce import liger_available as liger_installed

log = logging.getLogger("megajepa")

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
                dtype: torch.dtype = torch.float32, init_context=None, device=None, **overrides):
    """A causal LM from a preset (random init seeded by ``seed``) or a local HF checkpoint.

    A random init runs on ``device`` (default: the current CUDA device when there is one, else
    the CPU; under ``init_context`` DeepSpeed places the parameters): a 3B model initializes in
    about a second on a GPU instead of a minute on the host."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    ctx = init_context if init_context is not None else contextlib.nullcontext()
    if init_from is not None:
        if not os.path.isdir(init_from) or not os.path.exists(os.path.join(init_from, "config.json")):
            raise FileNotFoundError(
                f"--init-from {init_from!r} is not a local Hugging Face model directory "
                "(no config.json); resolve a hub name or a GGUF file with megajepa.pretrained")
        with ctx:
            return AutoModelForCausalLM.from_pretrained(
                init_from, dtype=dtype, attn_implementation=attn_implementation)
    if preset is None or vocab_size is None:
        raise ValueError("build_model needs preset and vocab_size, or init_from")
    config = llama_config(preset, vocab_size, attn_implementation=attn_implementation,
                          **overrides)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # zero.Init places the partitions itself
    where = torch.device(device) if init_context is None else contextlib.nullcontext()
    torch.manual_seed(seed)
    with ctx, where:
        model = LlamaForCausalLM(config)
    return model.to(dtype)


LLAMA3_VOCAB = 128256  # the Llama-3 tokenizer: an upper bound for the vocabularies we train


def llama_parameters(config) -> int:
    """Parameter count of a Llama-style config, analytically (no model built)::

        V*D*(1 if tied else 2) + L*(D*H*hd + 2*D*KV*hd + H*hd*D + 3*D*F + 2*D) + D
    """
    d, L, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    hd = getattr(config, "head_dim", None) or d // heads
    layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * config.intermediate_size + 2 * d
    return v * d * (1 if config.tie_word_embeddings else 2) + L * layer + d


def estimate_parameters(preset: str | None = None, init_from: str | None = None,
                        vocab_size: int = LLAMA3_VOCAB) -> int:
    """Parameters a run will train, before its tokenizer is known: the preset's shape with
    ``vocab_size`` (default: the Llama-3 vocabulary, an upper bound), or the HF config of
    ``init_from`` (a folder, a hub name or a GGUF file: :func:`megajepa.pretrained.config_of`)."""
    if init_from:
        return llama_parameters(pretrained.config_of(init_from))
    return llama_parameters(llama_config(preset, vocab_size))


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


# ---------------------------------------------------------------------------- speed options

COMPILE_MODES = ("auto", "off", "layers", "model")
LIGER_MODES = ("auto", "on", "off")


def resolve_compile(mode: str, device, zero_stage: int = 0) -> str:
    """``auto`` = ``layers`` on CUDA under ZeRO-0/1/2 (Inductor fuses norms, RoPE and the
    MLP's activation around the matmuls), ``off`` on CPU and under ZeRO-3, whose parameter
    gathering hooks run inside each layer's call and are not traced by torch.compile."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"model.compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "auto":
        return "layers" if torch.device(device).type == "cuda" and zero_stage < 3 else "off"
    if mode != "off" and zero_stage >= 3:
        raise ValueError(f"model.compile={mode} is not supported with ZeRO-3 (its parameter "
                         "hooks run inside each layer); use model.compile off or a ZeRO-1/2 "
                         "config (train.ds_config)")
    return mode


def resolve_liger(mode: str, device, compile_mode: str) -> bool:
    """``auto`` = on where it can run (CUDA, liger-kernel installed) and nothing is compiled
    (compiled regions fuse the same ops); ``on`` insists and fails clearly where it cannot."""
    if mode not in LIGER_MODES:
        raise ValueError(f"model.liger must be one of {LIGER_MODES}, got {mode!r}")
    cuda = torch.device(device).type == "cuda"
    installed = liger_installed()
    if mode == "on":
        if not cuda:
            raise ValueError(f"model.liger=on needs CUDA (liger-kernel is Triton GPU code); this "
                             f"run is on {torch.device(device).type}: use model.liger auto or off")
        if not installed:
            raise ValueError("model.liger=on but liger-kernel is not installed: "
                             "pip install liger-kernel, or use model.liger auto or off")
        return True
    return mode == "auto" and cuda and installed and compile_mode == "off"


def decoder_layers(model):
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers at base_model.layers; "
                         "model.compile=layers needs a Llama-style model (use off or model)")
    return layers


def optimize(model, cfg_model, device, *, zero_stage: int = 0) -> dict:
    """Apply the ``model`` section's speed options to ``model`` in place; return what was
    applied (``compile``, ``liger``, ``checkpointing``), for the log."""
    compile_mode = resolve_compile(cfg_model.compile, device, zero_stage)
    liger = resolve_liger(cfg_model.liger, device, compile_mode)
    if liger:
        if getattr(model.config, "model_type", None) != "llama":
            raise ValueError(f"model.liger=on patches Llama modules; this model is "
                             f"{model.config.model_type!r}: use model.liger off")
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        # The LM loss is ours (objective.lm_loss_sum), so no liger loss head here.
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model)
    if cfg_model.checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:  # the older transformers 5.x name
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile_mode == "layers":
        for layer in decoder_layers(model):
            layer.compile()
    elif compile_mode == "model":
        model.base_model.compile()
    applied = {"compile": compile_mode, "liger": liger, "checkpointing": bool(cfg_model.checkpointing)}
    log.info("model speed options: %s", applied)
    return applied


# ------------------------------------------------------------------------------------ LoRA

def lora_token_ids(tokenizer, base_rows: int) -> list[int]:
    """The embedding rows that train under LoRA: megajepa's own tokens (``<sep>``,
    ``<pred_1..K>``) and every row :func:`resize_for_tokenizer` added past ``base_rows`` (the
    checkpoint's vocabulary). Frozen, the predictor tokens would stay fixed vectors."""
    vocab = tokenizer.get_vocab()
    ids = set(pred_ids(tokenizer)) | set(range(base_rows, len(tokenizer)))
    if SEP_TOKEN in vocab:
        ids.add(vocab[SEP_TOKEN])
    return sorted(ids)


def apply_lora(model, cfg_model, token_ids, *, seed: int = 0):
    """Inject ``model.lora_*`` adapters into ``model`` in place with peft; returns the
    ``PeftModel``, whose ``base_model.model`` is ``model`` itself, adapted: training runs that
    one, so the loss head, the masks and the held-out code read a Hugging Face model. Only the
    adapters and the rows ``token_ids`` of the input embedding (peft's trainable tokens; a
    tied LM head follows them) train. The adapters are created whole and seeded (``seed``),
    the same on every rank (an untied LM head trains the same rows: :func:`_token_rows`); under
    ZeRO-3 the engine partitions them like any parameter made
    outside ``zero.Init`` (made inside, peft's zeroing of ``lora_B`` would write into empty
    partitions), and the embedding and head are gathered while peft copies the token rows."""
    try:  # optional: pip install -e '.[lora]'
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("model.lora_rank needs peft: pip install -e '.[lora]'") from None

    rank = cfg_model.lora_rank
    config = LoraConfig(r=rank, lora_alpha=cfg_model.lora_alpha or 2 * rank,
                        lora_dropout=cfg_model.lora_dropout, bias="none",
                        target_modules=lora_targets(cfg_model),
                        trainable_token_indices=_token_rows(model, list(token_ids)))
    heads = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None:
        heads.append(model.get_output_embeddings().weight)
    partitioned = [p for p in heads if hasattr(p, "ds_id")]
    gathered = contextlib.nullcontext()
    if partitioned:
        import deepspeed  # only under ZeRO-3
        gathered = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    torch.manual_seed(seed)
    with gathered:
        try:
            with warnings.catch_warnings():  # peft asks transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
                peft_model = get_peft_model(model, config)
        except ValueError as e:  # target modules not found, an unsupported layer type
            raise ValueError(f"model.lora_targets={cfg_model.lora_targets!r}: "
                             f"{' '.join(str(e).split())}") from None
        objective.check_lm_head(model)  # the loss head reads the adapted rows, as the model does
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA rank %d alpha %g on %s, %d trainable token rows: %d trainable parameters",
             rank, config.lora_alpha, cfg_model.lora_targets, len(token_ids), trainable)
    return peft_model


def _token_rows(model, token_ids: list[int]):
    """peft's ``trainable_token_indices``: the input embedding's rows, which a tied LM head
    follows; an untied head gets the same rows of its own (else the added tokens' output rows
    would stay as initialized), except a head with a bias, which peft's token layer drops."""
    if not token_ids:
        return None
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is emb.weight:
        return token_ids
    if getattr(head, "bias", None) is not None:
        log.warning("LoRA: the LM head has a bias, so its rows of the %d added tokens stay as "
                    "initialized (peft's trainable tokens would drop the bias)", len(token_ids))
        return token_ids
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(emb)]: token_ids, names[id(head)]: token_ids}


def register_lora_zero3(owner, lm) -> None:
    """ZeRO-3: peft's trainable-token layers read their base weight and their rows outside
    the modules that own them, and the loss head reads the LM head's adapted weight in
    ``owner``'s forward (``train.JepaModule``): DeepSpeed must gather those there."""
    import deepspeed
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for m in lm.modules():
        if isinstance(m, TrainableTokensLayer):
            for p in m.parameters():
                deepspeed.zero.register_external_parameter(m, p)
    for p in lm.get_output_embeddings().parameters():
        deepspeed.zero.register_external_parameter(owner, p)

