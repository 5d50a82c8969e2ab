"""Training-side data: resolve the store and tokenizer a run uses and check them against the
config (the held-out evaluations the loop calls live in :mod:`megajepa.heldout`).

``data.train`` is one of::

    a store (a directory with manifest.json)   used as it is
    a chat / group / text JSONL, or .txt       preprocessed into <run_dir>/data/store by
                                               data_tools.build.build_store (rank 0)
    empty                                      the **embedded** NL-RX-style dataset: rank 0
                                               generates pairs (data_tools.nlrx) and builds
                                               <run_dir>/embedded; its held-out split (disjoint
                                               regexes) is the final eval

All three are reused on resume. Which tokenizer turns text into ids, everywhere (the JSONL,
the embedded data, the held-out set ``data.eval``)::

    data.tokenizer, when given
    else, with model.init_from, the model's own (its chat template too)
    else a SentencePiece tokenizer trained on the data (the store's, for a store)

A pretrained model first becomes a local folder (:func:`megajepa.pretrained.resolve`, rank 0:
a hub snapshot, or a GGUF file converted into ``<run_dir>/init_model``), and a store whose
ids do not mean what the model's tokenizer means is refused before training
(:func:`check_vocabulary`). :func:`check_paths` runs before anything is written: a missing
path is one :class:`DataError` naming the setting and the path.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch.distributed as dist

from data_tools import nlrx
from data_tools.build import build_store, read_json
from data_tools.errors import DataError
from data_tools.hub import is_repo_id
from data_tools.preprocess import preprocess
from data_tools.records import read_records
from data_tools.store import open_store
from data_tools.tokenizer import load_tokenizer, pred_ids, train_sentencepiece
from megajepa import pretrained
from megajepa.loader import vector_costs
from megajepa.stp import store_tube_lengths

log = logging.getLogger(__name__)


@dataclass
class RunData:
    train_store: object           # data_tools.store.Store
    tokenizer: object
    pred_ids: list
    pad_id: int
    eval_store: object | None     # held-out pairs, tokenized (losses, diagnostics)
    eval_records: list | None     # held-out chat records (generation eval)
    eval_path: str | None
    description: str = ""         # one line for the console: what the run trains on
    system_in_plain: bool = False  # the store's plain prompts carry the system prompt (held-out evals too)
    model_dir: str | None = None   # model.init_from as a local folder (None: random init)
    eval_loader: object = None     # megajepa.heldout's loader of eval_store, built at the first eval


def is_store(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json"))


def train_store_path(cfg, run_dir: str) -> str:
    """Where the store a run trains on lives (export and eval find its tokenizer there)."""
    d = cfg.data
    if d.train and is_store(d.train):
        return d.train
    return os.path.join(run_dir, "data", "store") if d.train else \
        os.path.join(run_dir, "embedded", "train_store")


def check_paths(cfg) -> None:
    """Every path the config names exists and has the right shape (no writes, no collectives)."""
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.train:
        if not os.path.exists(d.train):
            raise DataError(f"data.train {d.train}: does not exist (give a store from python -m "
                            "data_tools.preprocess, or a chat/group/text JSONL or .txt file)")
        if os.path.isdir(d.train) and not is_store(d.train):
            raise DataError(f"data.train {d.train}: a directory without manifest.json, so not a store; "
                            "give a store (python -m data_tools.preprocess) or a JSONL/.txt file")
    if d.eval and not os.path.isfile(d.eval):
        raise DataError(f"data.eval {d.eval}: " + ("is a directory, expected a chat-messages JSONL file"
                                                    if os.path.isdir(d.eval) else "does not exist"))
    if d.tokenizer and not os.path.exists(d.tokenizer) and not is_repo_id(d.tokenizer):
        raise DataError(f"data.tokenizer {d.tokenizer}: no such directory (a tokenizer is a local "
                        "directory, or a Hugging Face hub name org/name)")
    if m.init_from:
        pretrained.check_source(m.init_from)
    if t.resume and t.resume != "auto" and not os.path.exists(t.resume):
        raise DataError(f"train.resume {t.resume}: no complete checkpoint found: the path does not "
                        "exist (give a run dir, its checkpoints/ or one step_* dir; or auto)")


def _embedded_options(cfg, tokenizer: str | None) -> dict:
    d = cfg.data
    options = dict(examples=d.embedded_examples, eval=d.embedded_eval, vocab=d.embedded_vocab,
                   seed=cfg.train.seed, k=max(8, cfg.jepa.k), template=d.template)
    return options if tokenizer is None else dict(options, vocab=None, tokenizer=tokenizer)


def _embedded(cfg, run_dir: str, rank: int, tokenizer: str | None) -> tuple[str, str | None]:
    """Generate + tokenize the embedded dataset once (rank 0), with ``tokenizer`` or one
    trained on it; return (store, eval_jsonl or None when ``data.embedded_eval`` is 0).
    Rebuilt when its options change."""

    d = cfg.data
    root = os.path.join(run_dir, "embedded")
    store, eval_jsonl = os.path.join(root, "train_store"), os.path.join(root, "test.jsonl")
    done, options = os.path.join(root, "READY"), _embedded_options(cfg, tokenizer)
    if rank == 0 and read_json(done) != options:
        os.makedirs(root, exist_ok=True)
        seed = cfg.train.seed
        train = nlrx.generate_pairs(d.embedded_examples, seed=seed, split="train", paraphrase=0.5)
        test = nlrx.generate_pairs(d.embedded_eval, seed=seed, split="test", paraphrase=0.5)
        for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
            with open(os.path.join(root, name), "w") as fh:
                for r in rows:
                    fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
        tok_dir = tokenizer
        if tok_dir is None:
            texts = [r["description"] for r in train] + [r["regex"] for r in train]
            tok_dir = os.path.join(root, "tokenizer")
            train_sentencepiece(texts, tok_dir, vocab_size=d.embedded_vocab, k=options["k"])
        preprocess([os.path.join(root, "train.jsonl")], store, tokenizer=tok_dir,
                   template=d.template, k=options["k"], overwrite=True, progress=False)
        with open(done, "w") as fh:
            json.dump(options, fh)
    if dist.is_initialized():
        dist.barrier()
    return store, eval_jsonl if d.embedded_eval > 0 else None


def _on_rank0(fn, rank: int, what: str):
    """``fn()`` on rank 0; every rank returns its result or raises its error (else the other
    ranks would hang). Ranks > 0 run ``fn`` neither."""
    outcome = [None, None]  # result, error
    if rank == 0:
        try:
            outcome[0] = fn()
        except Exception as e:  # noqa: BLE001 - every rank must learn it, or the others hang
            outcome[1] = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = list(outcome)
        if rank == 0 and outcome[1] is not None and not isinstance(outcome[1], DataError):
            shared[1] = RuntimeError(f"rank 0 could not {what}: {outcome[1]}")  # picklable
        dist.broadcast_object_list(shared, src=0)
        if rank != 0:
            outcome = shared
    result, error = outcome
    if error is not None:
        raise error
    return result


def _build(cfg, run_dir: str, rank: int, tokenizer: str | None) -> tuple[str, str]:
    """Raw records in ``data.train`` -> ``<run_dir>/data/store`` with ``tokenizer`` (None:
    one trained on them), on rank 0; every rank learns the store, or the same error."""

    d = cfg.data
    return _on_rank0(lambda: build_store(
        d.train, os.path.join(run_dir, "data"), tokenizer=tokenizer, vocab_size=d.vocab_size,
        k=max(8, cfg.jepa.k), template=d.template, max_doc_tokens=d.seq_len, on_bad=d.on_bad),
        rank, "build the store")


def model_dir(cfg, run_dir: str, rank: int) -> str | None:
    """``model.init_from`` as a local folder: resolved (downloaded, converted) on rank 0 first,
    then on the others from what rank 0 left (the cache, ``<run_dir>/init_model``)."""
    source = cfg.model.init_from
    if not source:
        return None
    gguf_dir = os.path.join(run_dir, pretrained.INIT_DIR)
    path = _on_rank0(lambda: pretrained.resolve(source, gguf_dir=gguf_dir), rank, "resolve model.init_from")
    return path if rank == 0 else pretrained.resolve(source, gguf_dir=gguf_dir)


EVAL_STORE, EVAL_SOURCE = "eval_store", "eval_store.json"


def _tokenize_eval(eval_jsonl: str, tokenizer_dir: str, run_dir: str, template: str, rank: int,
                   system_in_plain: bool = False):
    """``data.eval`` tokenized into ``<run_dir>/eval_store`` (rank 0), reused while what it was
    built from is the same (``eval_store.json``: the file's path, size and mtime, the
    tokenizer's files, the template); rebuilt, with one line, when any of it changed."""

    out = os.path.join(run_dir, EVAL_STORE)
    key_file = os.path.join(run_dir, EVAL_SOURCE)
    key = dict(eval=file_fingerprint(eval_jsonl), tokenizer=folder_digest(tokenizer_dir),
               template=template, system_in_plain=system_in_plain)
    if rank == 0:
        have = os.path.exists(os.path.join(out, "manifest.json"))
        if not have or read_json(key_file) != key:
            if have:
                log.warning("data.eval %s: the held-out store %s was built from another file, "
                            "tokenizer or template; rebuilding it", eval_jsonl, out)
            if os.path.exists(key_file):
                os.remove(key_file)   # a crash mid-build leaves no stale key behind
            preprocess([eval_jsonl], out, tokenizer=tokenizer_dir, template=template,
                       system_in_plain=system_in_plain, overwrite=True, progress=False)
            with open(key_file, "w") as fh:
                json.dump(key, fh)
    if dist.is_initialized():
        dist.barrier()
    return out


def file_fingerprint(path: str) -> list:
    """What identifies a data file's version cheaply: absolute path, size, mtime."""
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def folder_digest(folder: str) -> str:
    """sha256 over a (tokenizer) folder's file names and contents: a retrained tokenizer at
    the same path is another tokenizer."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def prepare(cfg, run_dir: str, *, rank: int) -> RunData:

    d = cfg.data
    model = model_dir(cfg, run_dir, rank)
    text_tokenizer = d.tokenizer or model  # None: train one on the data
    if d.train and is_store(d.train):
        store_path, eval_jsonl, description = d.train, d.eval, None
    elif d.train:
        store_path, description = _build(cfg, run_dir, rank, text_tokenizer)
        eval_jsonl = d.eval
    else:
        store_path, eval_jsonl = _embedded(cfg, run_dir, rank, text_tokenizer)
        eval_jsonl = d.eval or eval_jsonl
        held = f"{d.embedded_eval} held out for the final eval" if d.embedded_eval else "none held out"
        description = (f"the embedded NL-RX-style dataset: {d.embedded_examples} generated pairs, "
                       f"{held} ({os.path.dirname(store_path)})")
    store = open_store(store_path)
    if description is None:
        counts = store.manifest.get("counts", {})
        description = (f"store {store_path}: {len(store)} {store.kind} examples, "
                       f"{counts.get('tokens', '?')} tokens")
    tok_dir = d.tokenizer or store.tokenizer_path
    tok, added = load_tokenizer(tok_dir)
    if d.tokenizer or model:
        made_with = tok if tok_dir == store.tokenizer_path else load_tokenizer(store.tokenizer_path)[0]
        check_vocabulary(store, made_with, d.tokenizer or model,
                         f"data.tokenizer {d.tokenizer}" if d.tokenizer else
                         f"the model's tokenizer (model.init_from {cfg.model.init_from})")
    if added and not cfg.model.init_from:
        raise ValueError(f"tokenizer {tok_dir} lacks {added}; a from-scratch run needs a "
                         "megajepa tokenizer (python -m data_tools.train_tokenizer)")
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer {tok_dir} has no pad token")
    eval_store = eval_records = None
    system_in_plain = bool(store.manifest.get("source", {}).get("system_in_plain", False))
    if eval_jsonl:
        if not os.path.exists(eval_jsonl):
            raise FileNotFoundError(f"data.eval {eval_jsonl}: no such file")
        eval_records = read_records(eval_jsonl, limit=cfg.train.eval_limit)
        eval_store = open_store(_tokenize_eval(eval_jsonl, tok_dir, run_dir, d.template, rank,
                                               system_in_plain))
    return RunData(store, tok, pred_ids(tok), tok.pad_token_id, eval_store, eval_records,
                   eval_jsonl, "data: " + description, system_in_plain=system_in_plain,
                   model_dir=model)


def check_vocabulary(store, store_tokenizer, reference: str, label: str) -> None:
    """Refuse a store whose ids do not mean what the tokenizer in ``reference`` (the model's
    folder, or ``data.tokenizer``) means: every token of that vocabulary must have the same id
    in the tokenizer the store was made with (the megajepa tokens added to it may follow)."""
    ref, added = load_tokenizer(reference)
    have = store_tokenizer.get_vocab()
    for token, i in sorted(ref.get_vocab().items(), key=lambda kv: kv[1]):
        if token not in added and have.get(token) != i:
            where = "is missing" if token not in have else f"is id {have[token]}"
            raise DataError(
                f"store {store.path} was tokenized with a different vocabulary than {label}: "
                f"{token!r} {where} in the store's tokenizer and id {i} in that one "
                f"({len(have)} vs {len(ref)} tokens); preprocess with --tokenizer {reference}")


def check_compatible(cfg, data: RunData) -> None:
    """Config vs data, before any training: predictor tokens, row length, vocabulary."""

    j, d = cfg.jepa, cfg.data
    if j.k > len(data.pred_ids):
        raise ValueError(
            f"jepa.k={j.k} but the tokenizer has only {len(data.pred_ids)} predictor tokens "
            f"(<pred_1>..<pred_{len(data.pred_ids)}>); lower jepa.k or retrain the tokenizer with "
            f"python -m data_tools.train_tokenizer --k {j.k}")
    store = data.train_store
    # Shortest example, as packed: too-short rows would drop every example.
    costs = vector_costs(store.kind, store.view_lengths, store.example_offsets,
                         np.full(len(store), j.lbd > 0 and j.objective == "views"), k=j.k,
                         jepa_pairs=j.jepa_pairs, reverse=j.reverse, read_at=j.read_at)
    shortest = int(costs.min()) if len(costs) else 0
    if shortest > d.seq_len:
        raise ValueError(
            f"data.seq_len={d.seq_len} is below the shortest example ({shortest} tokens packed "
            f"with k={j.k}); raise data.seq_len to at least {shortest}")
    if j.objective == "stp":
        tubes = store_tube_lengths(store.kind, store.view_lengths, store.example_offsets)
        if not (tubes >= 2).any():
            raise ValueError(f"jepa.objective=stp: every document of {store.path} is shorter than 3 "
                             "tokens, too short for a span (shorter ones are skipped and counted in "
                             "stp/skipped_short); give longer documents or use jepa.objective views")
    vocab = store.manifest.get("tokenizer", {}).get("vocab_size")
    if vocab and vocab > len(data.tokenizer):
        raise ValueError(f"store {store.path} was tokenized with a vocabulary of {vocab}, "
                         f"larger than the tokenizer's {len(data.tokenizer)}")
