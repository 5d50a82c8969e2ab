"""Make a tiny local Hugging Face Llama model + tokenizer: a stand-in for a downloaded
checkpoint, so scripts/finetune_hf.sh runs on a CPU with no network.

    python scripts/make_tiny_hf.py --data path/to/nlrx_synth_train.jsonl --out /tmp/tiny_hf
    python scripts/make_tiny_hf.py --data path/to/nlrx_synth_train.jsonl --out /tmp/hf_1b \
        --preset llama-3.2-1b --k-pred 8 --config-only

The tokenizer is a SentencePiece BPE trained by data_tools on the chat records' text (each
message as ``role: content``, as the chat template set here renders it); by default it has
no ``<pred_i>`` tokens, like a real Hugging Face tokenizer, so the fine-tuning path adds them
(data_tools.preprocess) and resizes the embeddings (the trainer). The model is a randomly
initialised 2-layer ``LlamaForCausalLM`` (seeded), or with ``--preset`` one of megajepa's
shapes (``llama-3.2-1b``: the random-init model of the authors' ``finetune.py --pretrain``
in scripts/bench_anchor.py). The folder loads with ``AutoModelForCausalLM.from_pretrained`` /
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
    p.add_argument("--config-only", action="store_true",
                   help="write config.json and the tokenizer, no weights (random init elsewhere)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-records", type=int, default=0, help="0 = all")
    a = p.parse_args(argv)
    from megajepa.model import PRESETS

    if a.preset is not None and a.preset not in PRESETS:
        p.error(f"--preset {a.preset!r}: choose one of {sorted(PRESETS)}")
    if not os.path.isfile(a.data):
        p.error(f"--data {a.data}: no such file")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from data_tools.tokenizer import train_sentencepiece

    tok = train_sentencepiece(chat_texts(a.data, a.max_records), a.out, vocab_size=a.vocab_size,
                              k=a.k_pred)
    os.remove(os.path.join(a.out, "spm.model"))  # an HF folder: tokenizer.json is the tokenizer
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(a.out)
    _portable_tokenizer_config(a.out)

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if a.preset:
        from megajepa.model import llama_config

        config = llama_config(a.preset, len(tok), **ids)
    else:
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=4 * a.hidden,
            num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, tie_word_embeddings=False, **ids)
    if a.config_only:
        config.save_pretrained(a.out)
        _legacy_rope_keys(os.path.join(a.out, "config.json"))
        from megajepa.model import llama_parameters

        print(f"HF config ({a.preset or 'custom'}, {llama_parameters(config) / 1e6:.1f}M parameters, "
              f"no weights), vocabulary {len(tok)} -> {a.out}")
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
