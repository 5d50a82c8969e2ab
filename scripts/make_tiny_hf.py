"""Make a tiny local Hugging Face Llama model + tokenizer: a stand-in for a downloaded
checkpoint, so scripts/finetune_hf.sh runs on a CPU with no network.

    python scripts/make_tiny_hf.py --data path/to/nlrx_synth_train.jsonl --out /tmp/tiny_hf
    python scripts/make_tiny_hf.py --data path/to/nlrx_synth_train.jsonl --out /tmp/hf_1b \
        --preset llama-3.2-1b --k-pred 8 --config-only
    python scripts/make_tiny_hf.py --data path/to/nlrx_synth_train.jsonl --out /tmp/tiny_gemma2 \
        --family gemma2

``--family`` makes the same tiny shape in another architecture ``transformers`` ships
(:data:`FAMILIES`: Qwen2/3, Mistral, Gemma-2/3, OLMo-2, Phi-3, Cohere, Granite, ...), with the
family's own defaults (Gemma ties its embeddings and soft-caps its logits) and sliding
windows of ``--window`` tokens, shorter than the documents, so a packed run exercises them.

The tokenizer is a SentencePiece BPE trained by data_tools on the chat records' text (each
message as ``role: content``, as the chat template set here renders it); by default it has
no ``<pred_i>`` tokens, like a real Hugging Face tokenizer, so the fine-tuning path adds them
(data_tools.preprocess) and resizes the embeddings (the trainer). The model is a randomly
initialised 2-layer ``LlamaForCausalLM`` (seeded), or with ``--preset`` one of megajepa's
shapes (``llama-3.2-1b``: the random-init model of the authors' ``finetune.py --pretrain``
in scripts/bench/anchor.py). The folder loads with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained``; ``--config-only`` writes no weights (enough for
``AutoModelForCausalLM.from_config``, i.e. a from-scratch run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Role words, then the message; the generation prompt ends with "assistant:".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


# family -> (config class, causal-LM class, settings beyond the shape). Windows and layer
# types are filled in by family_config; everything else is the family's default.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": True, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"use_sliding_window": True, "max_window_layers": 1}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", {}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 8.0}),
}
WINDOWED = {"qwen2", "qwen3", "mistral", "gemma2", "gemma3", "olmo3", "phi3", "cohere2"}
PER_LAYER_TYPE = {"gemma2", "gemma3", "olmo3", "cohere2"}  # local/global layers, alternating


def family_config(family: str, *, vocab_size: int, hidden: int = 64, layers: int = 2,
                  window: int = 16, intermediate: int | None = None, **settings):
    """A tiny ``transformers`` config of ``family`` (:data:`FAMILIES`): 4 heads (2 for keys and
    values), a window of ``window`` tokens where the family has one (local and global layers
    alternating where it has both), ``settings`` on top."""
    import transformers

    config_cls, _, extra = FAMILIES[family]
    shape = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                 intermediate_size=intermediate or 4 * hidden, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048)
    if family in ("qwen3", "gemma2", "gemma3"):  # their default head_dim is not hidden / heads
        shape["head_dim"] = hidden // 4
    if family in WINDOWED:
        shape["sliding_window"] = window
    if family in PER_LAYER_TYPE:
        shape["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                                for i in range(layers)]
    return getattr(transformers, config_cls)(**{**shape, **extra, **settings})


def family_model(config, family: str, seed: int = 0, **kw):
    """A seeded random model of ``config`` (``kw``: e.g. ``attn_implementation``)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, FAMILIES[family][1])._from_config(config, **kw)


def save_family(out: str, family: str, tok, *, hidden: int = 64, layers: int = 2,
                window: int = 16, seed: int = 0):
    """A tiny random ``family`` model with tokenizer ``tok`` (its special ids in the config)
    saved to ``out`` as a Hugging Face folder; returns the model."""
    tok.save_pretrained(out)
    _portable_tokenizer_config(out)
    config = family_config(family, vocab_size=len(tok), hidden=hidden, layers=layers, window=window,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    model = family_model(config, family, seed)
    model.save_pretrained(out, safe_serialization=True)
    _legacy_rope_keys(os.path.join(out, "config.json"))
    return model


def chat_texts(path: str, limit: int) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if limit and n >= limit:
                break
            if line.strip():
                texts += [f"{m['role']}: {m['content']}" for m in json.loads(line)["messages"]]
    return texts


def _portable_tokenizer_config(out: str) -> None:
    """Write the tokenizer config in the form both transformers 4.x and 5.x read (5.x names its
    own ``TokenizersBackend`` class and lists extras as ``extra_special_tokens``), so the
    authors' pinned transformers 4.55 loads the folder too."""
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as fh:
        cfg = json.load(fh)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(cfg.get("extra_special_tokens"), list):  # 4.x: a dict of named extras
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
    with open(path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)


def _legacy_rope_keys(path: str) -> None:
    """Also write RoPE as transformers 4.x reads it (``rope_theta``, ``rope_scaling``), so the
    authors' pinned transformers 4.55 builds the same Llama-3 RoPE from this folder."""
    with open(path) as fh:
        cfg = json.load(fh)
    rope = cfg.get("rope_parameters")
    if not rope:
        return
    cfg.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        cfg.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    with open(path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="chat-messages JSONL to train the tokenizer on")
    p.add_argument("--out", required=True, help="folder to write (model + tokenizer)")
    p.add_argument("--vocab-size", type=int, default=512, help="tokenizer vocabulary (soft limit)")
    p.add_argument("--k-pred", type=int, default=0,
                   help="<pred_i> tokens in the tokenizer (default 0: a foreign tokenizer)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--preset", default=None,
                   help="a megajepa model shape (e.g. llama-3.2-1b) instead of --hidden/--layers")
    p.add_argument("--family", default=None, choices=sorted(FAMILIES),
                   help="another architecture at the --hidden/--layers shape (default: Llama, "
                        "untied embeddings)")
    p.add_argument("--window", type=int, default=16,
                   help="sliding window (tokens) of a --family that has one")
    p.add_argument("--config-only", action="store_true",
                   help="write config.json and the tokenizer, no weights (random init elsewhere)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-records", type=int, default=0, help="0 = all")
    a = p.parse_args(argv)
    from megajepa.model import PRESETS

    if a.preset is not None and a.preset not in PRESETS:
        p.error(f"--preset {a.preset!r}: choose one of {sorted(PRESETS)}")
    if a.preset and a.family:
        p.error("--preset and --family: choose one (a preset is a Llama shape)")
    if not os.path.isfile(a.data):
        p.error(f"--data {a.data}: no such file")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from data_tools.tokenizer import train_sentencepiece

    tok = train_sentencepiece(chat_texts(a.data, a.max_records), a.out, vocab_size=a.vocab_size,
                              k=a.k_pred)
    os.remove(os.path.join(a.out, "spm.model"))  # an HF folder: tokenizer.json is the tokenizer
    tok.chat_template = CHAT_TEMPLATE
    if a.family and not a.config_only:
        model = save_family(a.out, a.family, tok, hidden=a.hidden, layers=a.layers, window=a.window,
                            seed=a.seed)
        n = sum(p.numel() for p in model.parameters())
        print(f"tiny HF model ({a.family}): {n / 1e6:.2f}M parameters, vocabulary {len(tok)} -> {a.out}")
        return 0
    tok.save_pretrained(a.out)
    _portable_tokenizer_config(a.out)

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if a.preset:
        from megajepa.model import llama_config

        config = llama_config(a.preset, len(tok), **ids)
    elif a.family:
        config = family_config(a.family, vocab_size=len(tok), hidden=a.hidden, layers=a.layers,
                               window=a.window, **ids)
    else:
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=4 * a.hidden,
            num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, tie_word_embeddings=False, **ids)
    if a.config_only:
        config.save_pretrained(a.out)
        _legacy_rope_keys(os.path.join(a.out, "config.json"))
        from megajepa.model import llama_parameters

        print(f"HF config ({a.preset or a.family or 'custom'}, {llama_parameters(config) / 1e6:.1f}M "
              f"parameters, no weights), vocabulary {len(tok)} -> {a.out}")
        return 0
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(a.out, safe_serialization=True)
    _legacy_rope_keys(os.path.join(a.out, "config.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny HF model: {n / 1e6:.2f}M parameters, vocabulary {len(tok)} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
