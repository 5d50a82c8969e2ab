"""Tokenizers: train SentencePiece (BPE or unigram) and load any Hugging Face tokenizer with
the megajepa special tokens.

Trained tokenizers have fixed ids for the specials::

    0 <pad>   1 <unk>   2 <s>   3 </s>   4 <sep>   5.. <pred_1> .. <pred_K>   then learned pieces

and are saved as a Hugging Face directory (``tokenizer.json`` converted from the
SentencePiece model by ``transformers``' converter, plus ``tokenizer_config.json``) that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads offline; the raw ``spm.model`` is
kept beside it.  :func:`load_tokenizer` accepts any tokenizer directory or hub name and adds
``<sep>``, ``<pred_1..K>`` (and ``<pad>`` if there is none) when missing, reporting what it
added so the caller knows to resize embeddings.
"""
from __future__ import annotations

import inspect
import io
import os
import re
from typing import Iterable

from . import hub
from .errors import DataError
from .templates import PRED_TOKEN, SEP_TOKEN

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", SEP_TOKEN)
DEFAULT_K = 8
_PRED_RE = re.compile(r"^<pred_(\d+)>$")


def pred_tokens(k: int) -> list[str]:
    return [PRED_TOKEN.format(i) for i in range(1, k + 1)]


def train_sentencepiece(texts: Iterable[str], out_dir: str, *, vocab_size: int = 8000,
                        model_type: str = "bpe", k: int = DEFAULT_K,
                        character_coverage: float = 1.0, seed_sentencepiece_size: int = 1_000_000,
                        input_sentence_size: int = 0):
    """Train a SentencePiece model on ``texts`` and save a Hugging Face tokenizer to ``out_dir``.

    Returns the loaded ``PreTrainedTokenizerFast``.  ``vocab_size`` includes the specials;
    it is a soft limit (SentencePiece shrinks it on tiny corpora rather than failing).
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"unknown tokenizer model type {model_type!r} (bpe|unigram)")
    if k < 0:
        raise DataError(f"--k-pred must be >= 0, got {k}")
    if vocab_size <= len(SPECIALS) + k:
        raise DataError(f"--vocab-size {vocab_size} leaves no room for learned pieces "
                        f"(the {len(SPECIALS) + k} special tokens take ids 0..{len(SPECIALS) + k - 1})")
    model = io.BytesIO()
    failed: list = []

    def guarded():  # an error raised by the input must surface as itself, not as spm's RuntimeError
        try:
            yield from texts
        except BaseException as e:
            failed.append(e)
            raise

    try:
        _train_spm(spm, guarded(), model, vocab_size=vocab_size, model_type=model_type, k=k,
                   character_coverage=character_coverage, seed_sentencepiece_size=seed_sentencepiece_size,
                   input_sentence_size=input_sentence_size)
    except RuntimeError as e:  # sentencepiece's own checks (e.g. too little text for the vocabulary)
        if failed:
            raise failed[0] from None
        raise DataError(f"sentencepiece cannot train: {(str(e).splitlines() or [''])[0]}") from None
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "spm.model"), "wb") as f:
        f.write(model.getvalue())
    tok = _hf_from_spm(model.getvalue(), k)
    tok.save_pretrained(out_dir)
    return tok


def _train_spm(spm, texts, model, *, vocab_size, model_type, k, character_coverage, seed_sentencepiece_size,
               input_sentence_size):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        user_defined_symbols=[SEP_TOKEN] + pred_tokens(k), hard_vocab_limit=False,
        character_coverage=character_coverage, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=os.cpu_count() or 1, minloglevel=2)


def _hf_from_spm(proto_bytes: bytes, k: int):
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(proto_bytes)
    if proto.trainer_spec.model_type == 2:  # BPE: piece -> id, merges ranked by score
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:  # unigram: (piece, score) by id
        vocab = [(p.piece, p.score) for p in proto.pieces]
    build = SpmConverter.build_tokenizer_from_spm_proto
    # Newer transformers take `legacy` (False: a space prefix only before the first chunk);
    # older 5.x releases lack it and build the legacy form. tokenizer.json records the
    # result, so a store and the tokenizer saved with it always agree.
    extra = {"legacy": False} if "legacy" in inspect.signature(build).parameters else {}
    backend = build(proto, vocab, **extra)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=[SEP_TOKEN] + pred_tokens(k))


def load_tokenizer(name_or_path: str, *, k: int | None = None):
    """Load a tokenizer directory (or hub name) and make sure it has the megajepa specials.

    Returns ``(tokenizer, added)`` where ``added`` lists the tokens this call added
    (non-empty means the model's embeddings must be resized).  ``k=None`` keeps the
    predictor tokens the tokenizer already has (``DEFAULT_K`` if it has none).  A name that
    is not a local directory goes to the Hugging Face hub only if it looks like ``org/name``
    (see :mod:`data_tools.hub`); otherwise it is ``no such directory: <name>`` at once.
    """
    if not name_or_path:
        raise DataError("no tokenizer given (--tokenizer)")
    tok = _resolve(str(name_or_path))
    return tok, prepare_tokenizer(tok, k=k)


def _resolve(name: str):
    from transformers import AutoTokenizer

    if os.path.isdir(name):
        return _from_pretrained(name, local_files_only=True)
    if os.path.exists(name):
        raise DataError(f"tokenizer {name}: is a file; a tokenizer is a directory "
                        "(python -m data_tools.train_tokenizer writes one)")
    if not hub.is_repo_id(name):
        raise DataError(f"no such directory: {name} (a tokenizer is a local directory, "
                        "or a Hugging Face hub name org/name)")
    try:  # already in the local cache: no network at all
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or unreadable): ask the hub once below
        pass
    if hub.offline():
        raise DataError(f"tokenizer {name}: not a local directory, and not in the local Hugging Face cache "
                        "(HF_HUB_OFFLINE is set)")
    hub.check_repo(name, repo_type="model", what="tokenizer")
    return _from_pretrained(name)


def _from_pretrained(name: str, **kw):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, **kw)
    except Exception as e:  # noqa: BLE001 - any loading failure is bad input here
        raise DataError(f"cannot load tokenizer: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        file=name) from None


def prepare_tokenizer(tok, *, k: int | None = None) -> list[str]:
    """Add ``<sep>``, ``<pred_1..K>`` and a pad token if missing; return what was added."""
    have = set(tok.get_vocab())
    existing_k = len(pred_ids(tok))
    k = (existing_k or DEFAULT_K) if k is None else k
    added = []
    if tok.pad_token is None:
        if "<pad>" not in have:
            added.append("<pad>")
        tok.pad_token = "<pad>"
    wanted = [SEP_TOKEN] + pred_tokens(k)
    missing = [t for t in wanted if t not in have]
    specials = [t for t in wanted if t not in set(tok.all_special_tokens)]
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    return added + missing


def pred_ids(tok) -> list[int]:
    """Ids of ``<pred_1> .. <pred_K>`` in order (K = the longest consecutive run present)."""
    vocab = tok.get_vocab()
    out = []
    while PRED_TOKEN.format(len(out) + 1) in vocab:
        out.append(vocab[PRED_TOKEN.format(len(out) + 1)])
    return out


def special_ids(tok) -> dict:
    """``{pad, bos, eos, sep, unk}`` ids (``None`` where the tokenizer has none)."""
    vocab = tok.get_vocab()
    return {"pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id,
            "sep": vocab.get(SEP_TOKEN), "unk": tok.unk_token_id}
