"""Tiny pretrained-looking checkpoints for the tests, built here (nothing downloaded).

* :func:`chat_tokenizer`: a byte-level BPE with ChatML specials and SmolLM2-135M-Instruct's
  chat template verbatim (it inserts a default system prompt when none is given): bos
  ``<|im_start|>``, eos = pad = ``<|im_end|>``, unk ``<|endoftext|>``, as SmolLM2 has them.
* :func:`save_tiny_chat_model`: a random 2-layer Llama with that tokenizer, as a HF folder.
* :func:`write_gguf`: a Llama written to a GGUF file the way llama.cpp's converter writes it
  (Q/K rows permuted, tokenizer as ``gpt2`` metadata), F32 or one quantization.
* :func:`fake_hub_cache`: a folder copied into a Hugging Face cache layout
  (``models--org--name/snapshots/<rev>/``, ``refs/main``), for offline hub tests.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chat_tokenizer(texts, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def save_tiny_chat_model(out, texts, *, seed: int = 0, tie: bool = True, hidden: int = 64):
    """(model, tokenizer) saved to ``out``: a random Llama with the ChatML tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chat_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=tie,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (interleaved rotary halves); transformers undoes it."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path, *, qtype=None, arch: str = "llama", raw_override=None):
    """Write ``model`` (a LlamaForCausalLM) and ``tok`` (byte-level BPE) to GGUF ``path``.

    ``qtype``: a ``gguf.GGMLQuantizationType`` for the 2-D weights (default F32);
    ``raw_override``: ``(tensor name, qtype)`` written as that type with raw zero bytes (a
    quantization some loader cannot read)."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny chat llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    H, KV = c.num_attention_heads, c.num_key_value_heads
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, g in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    for hf, g in names.items():
        t = sd[hf]
        if hf.endswith("q_proj.weight"):
            t = _permute(t, H)
        elif hf.endswith("k_proj.weight"):
            t = _permute(t, KV)
        if raw_override and raw_override[0] == g:
            size, nbytes = gguf.GGML_QUANT_SIZES[raw_override[1]]
            raw = np.zeros((t.shape[0], t.shape[1] // size * nbytes), dtype=np.uint8)
            w.add_tensor(g, raw, raw_dtype=raw_override[1])
        elif qtype is not None and t.ndim == 2:
            w.add_tensor(g, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(g, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def fake_hub_cache(folder, cache_dir, repo_id: str, revision: str = "0" * 40) -> str:
    """Copy ``folder`` into a Hugging Face hub cache under ``repo_id``; returns the snapshot."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", revision)
    shutil.copytree(folder, snap)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as fh:
        fh.write(revision)
    return snap
