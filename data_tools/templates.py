"""Token-id layouts of the views of one example (DESIGN §2): the single place that decides
where bos / sep / eos go.

    pair, plain:  text = [<s>] enc(user) [<sep>]        code = enc(assistant) [</s>]
    pair, chat:   text = chat_template(system?, user, add_generation_prompt=True)
                  code = enc(assistant) [</s>]
    group view:   [<s>] enc(v) [</s>]
    lm:           [<s>] enc(text) [</s>]

Every view ends with its end token (``<sep>`` for a plain text view, ``</s>`` otherwise), so the
hidden state there has seen the whole view.  The plain form drops the system prompt unless
``system_in_plain=True`` (then it is ``enc(system) + "\\n"`` before the user text): from-scratch
models gain nothing from a constant prefix.  A tokenizer without a bos token gets none.
``prompt_ids`` is the generation prompt and equals the text view.  A view given as a list of
ints is taken as already tokenized (no encoding, the same bos/eos rule).
"""
from __future__ import annotations

from typing import Sequence

SEP_TOKEN = "<sep>"
PRED_TOKEN = "<pred_{}>"  # 1-based: <pred_1> ... <pred_K>


def encode(tokenizer, text) -> list[int]:
    """Token ids of ``text`` without special tokens; a list of ints passes through."""
    if isinstance(text, str):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return [int(t) for t in text]


def _bos(tokenizer) -> list[int]:
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def sep_id(tokenizer) -> int:
    """Id of ``<sep>``; :func:`data_tools.tokenizer.prepare_tokenizer` guarantees it exists."""
    i = tokenizer.convert_tokens_to_ids(SEP_TOKEN)
    if i is None or i == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {SEP_TOKEN} token; load it with data_tools.tokenizer.load_tokenizer")
    return i


def prompt_ids(tokenizer, user: str, *, system: str | None = None, template: str = "plain",
               system_in_plain: bool = False) -> list[int]:
    """The text view of a pair, i.e. the generation prompt."""
    if template == "plain":
        prefix = encode(tokenizer, system + "\n") if (system and system_in_plain) else []
        return _bos(tokenizer) + prefix + encode(tokenizer, user) + [sep_id(tokenizer)]
    if template == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
            out = out["input_ids"]
        return [int(t) for t in out]
    raise ValueError(f"unknown template {template!r} (plain|chat)")


def pair_views(tokenizer, user: str, assistant: str, *, system: str | None = None, template: str = "plain",
               system_in_plain: bool = False) -> tuple[list[int], list[int]]:
    """``(text_ids, code_ids)`` of one (user, assistant) pair."""
    text = prompt_ids(tokenizer, user, system=system, template=template, system_in_plain=system_in_plain)
    return text, encode(tokenizer, assistant) + [tokenizer.eos_token_id]


def group_views(tokenizer, views: Sequence) -> list[list[int]]:
    """``[<s>] enc(v) [</s>]`` for each paraphrase ``v``."""
    return [_bos(tokenizer) + encode(tokenizer, v) + [tokenizer.eos_token_id] for v in views]


def lm_view(tokenizer, text) -> list[int]:
    """``[<s>] enc(text) [</s>]``: one next-token-only document."""
    return _bos(tokenizer) + encode(tokenizer, text) + [tokenizer.eos_token_id]
