"""Training-side data: resolve the store and tokenizer a run uses, check them against the
config, and the held-out evaluations the loop calls.

With ``data.train`` empty the run uses the **embedded** NL-RX-style dataset: rank 0
generates pairs with ``data_tools.nlrx``, trains a small SentencePiece tokenizer and
tokenizes into a store under ``<run_dir>/embedded`` (reused on resume); the held-out split
(disjoint regexes) is written as chat JSONL for the final generation eval.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class RunData:
    train_store: object           # data_tools.store.Store
    tokenizer: object
    pred_ids: list
    pad_id: int
    eval_store: object | None     # held-out pairs, tokenized (losses, diagnostics)
    eval_records: list | None     # held-out chat records (generation eval)
    eval_path: str | None


def _embedded(cfg, run_dir: str, rank: int) -> tuple[str, str]:
    """Generate + tokenize the embedded dataset once (rank 0); return (store, eval_jsonl)."""
    from data_tools import nlrx
    from data_tools.preprocess import preprocess
    from data_tools.tokenizer import train_sentencepiece

    d = cfg.data
    root = os.path.join(run_dir, "embedded")
    store, eval_jsonl = os.path.join(root, "train_store"), os.path.join(root, "test.jsonl")
    done = os.path.join(root, "READY")
    if rank == 0 and not os.path.exists(done):
        os.makedirs(root, exist_ok=True)
        seed = cfg.train.seed
        train = nlrx.generate_pairs(d.embedded_examples, seed=seed, split="train", paraphrase=0.5)
        test = nlrx.generate_pairs(d.embedded_eval, seed=seed, split="test", paraphrase=0.5)
        for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
            with open(os.path.join(root, name), "w") as fh:
                for r in rows:
                    fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
        texts = [r["description"] for r in train] + [r["regex"] for r in train]
        tok_dir = os.path.join(root, "tokenizer")
        train_sentencepiece(texts, tok_dir, vocab_size=d.embedded_vocab, k=max(8, cfg.jepa.k))
        preprocess([os.path.join(root, "train.jsonl")], store, tokenizer=tok_dir,
                   template=d.template, overwrite=True, progress=False)
        with open(done, "w") as fh:
            fh.write("ok\n")
    if dist.is_initialized():
        dist.barrier()
    return store, eval_jsonl


def _tokenize_eval(eval_jsonl: str, tokenizer_dir: str, run_dir: str, template: str, rank: int):
    from data_tools.preprocess import preprocess

    out = os.path.join(run_dir, "eval_store")
    if rank == 0 and not os.path.exists(os.path.join(out, "manifest.json")):
        preprocess([eval_jsonl], out, tokenizer=tokenizer_dir, template=template,
                   overwrite=True, progress=False)
    if dist.is_initialized():
        dist.barrier()
    return out


def prepare(cfg, run_dir: str, *, rank: int) -> RunData:
    from data_tools.store import open_store
    from data_tools.tokenizer import load_tokenizer, pred_ids

    d = cfg.data
    if d.train:
        store_path, eval_jsonl = d.train, d.eval
    else:
        store_path, eval_jsonl = _embedded(cfg, run_dir, rank)
        eval_jsonl = d.eval or eval_jsonl
    store = open_store(store_path)
    tok_dir = d.tokenizer or store.tokenizer_path
    tok, added = load_tokenizer(tok_dir)
    if added and not cfg.model.init_from:
        raise ValueError(f"tokenizer {tok_dir} lacks {added}; a from-scratch run needs a "
                         "megajepa tokenizer (python -m data_tools.train_tokenizer)")
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer {tok_dir} has no pad token")
    eval_store = eval_records = None
    if eval_jsonl:
        if not os.path.exists(eval_jsonl):
            raise FileNotFoundError(f"data.eval {eval_jsonl}: no such file")
        from megajepa.eval.run import read_records
        eval_records = read_records(eval_jsonl, limit=cfg.train.eval_limit)
        eval_store = open_store(_tokenize_eval(eval_jsonl, tok_dir, run_dir, d.template, rank))
    return RunData(store, tok, pred_ids(tok), tok.pad_token_id, eval_store, eval_records,
                   eval_jsonl)


def check_compatible(cfg, data: RunData) -> None:
    """Config vs data, before any training: predictor tokens, row length, vocabulary."""
    from megajepa.loader import vector_costs

    j, d = cfg.jepa, cfg.data
    if j.k > len(data.pred_ids):
        raise ValueError(
            f"jepa.k={j.k} but the tokenizer has only {len(data.pred_ids)} predictor tokens "
            f"(<pred_1>..<pred_{len(data.pred_ids)}>); lower jepa.k or retrain the tokenizer with "
            f"python -m data_tools.train_tokenizer --k {j.k}")
    store = data.train_store
    # Shortest example, as packed: too-short rows would drop every example.
    costs = vector_costs(store.kind, store.view_lengths, store.example_offsets,
                         np.full(len(store), j.lbd > 0), k=j.k, jepa_pairs=j.jepa_pairs,
                         reverse=j.reverse)
    shortest = int(costs.min()) if len(costs) else 0
    if shortest > d.seq_len:
        raise ValueError(
            f"data.seq_len={d.seq_len} is below the shortest example ({shortest} tokens packed "
            f"with k={j.k}); raise data.seq_len to at least {shortest}")
    vocab = store.manifest.get("tokenizer", {}).get("vocab_size")
    if vocab and vocab > len(data.tokenizer):
        raise ValueError(f"store {store.path} was tokenized with a vocabulary of {vocab}, "
                         f"larger than the tokenizer's {len(data.tokenizer)}")


@torch.no_grad()
def held_out_metrics(engine, cfg, data: RunData, rank: int, world: int, device,
                     max_batches: int = 4) -> dict:
    """Held-out LM/JEPA losses, and Enc(Text)/Enc(Code) diagnostics (collective)."""
    from megajepa.layout import pack
    from megajepa.loader import PackedLoader
    from megajepa.objective import hidden_states

    j = cfg.jepa
    loader = PackedLoader(data.eval_store, seq_len=cfg.data.seq_len,
                          micro_batch_rows=cfg.data.micro_batch_rows, k=j.k,
                          pred_ids=data.pred_ids, pad_id=data.pad_id, seed=0, rank=rank,
                          world_size=world, jepa_pairs=j.jepa_pairs, reverse=j.reverse,
                          lm_on_all=cfg.data.lm_on_all, overflow=cfg.data.overflow)
    n = min(max_batches, loader.steps_per_epoch)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    text, code = [], []
    engine.eval()
    for _ in range(n):
        b = next(loader)
        loss, lm, jl, cos = engine(b, lm_denominator=1.0, jepa_denominator=1.0)
        sums += torch.tensor([lm.item(), b.num_label_tokens, jl.item(), b.num_pairs],
                             dtype=torch.float64, device=device)
        # Enc(Text) and Enc(Code): the k = 0 layout reads the last text token and the code.
        examples = [data.eval_store.example(i) for row in loader.rows_of(0, loader.cursor - 1)
                    for i in row]
        b0 = pack(examples, cfg.data.seq_len, k=0, pred_ids=[], pad_id=data.pad_id).to(device)
        h = hidden_states(engine.module.lm, b0.input_ids, b0.position_ids, b0.doc_ids, b0.roles)
        flat = h.reshape(-1, h.shape[-1]).float()
        text.append(flat[b0.pred_index])
        code.append(flat[b0.target_index])
    engine.train()
    dist.all_reduce(sums)
    scalars = {"eval/lm_loss": (sums[0] / sums[1].clamp_min(1)).item(),
               "eval/jepa_loss": (sums[2] / sums[3].clamp_min(1)).item()}
    out = {"scalars": scalars}
    if text:
        t, c = torch.cat(text), torch.cat(code)
        gathered = [None] * world
        dist.all_gather_object(gathered, (t.cpu().numpy(), c.cpu().numpy()))
        if rank == 0:
            from megajepa.analyze import diagnostics
            t = np.concatenate([g[0] for g in gathered])
            c = np.concatenate([g[1] for g in gathered])
            if len(t) >= 2:
                out["diagnostics"] = diagnostics(t, c)
    return out


def final_eval(cfg, export_dir: str, data: RunData, run_dir: str) -> dict:
    """Greedy generation on the held-out pairs with the exported model (rank 0)."""
    from megajepa.eval import evaluate
    from megajepa.eval.run import load_model

    model, tok = load_model(export_dir)
    task = cfg.train.eval_task
    metrics = evaluate(model, tok, data.eval_records, task, template=cfg.data.template,
                       max_new_tokens=cfg.train.max_new_tokens)
    with open(os.path.join(run_dir, "final_eval.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)
    shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"final held-out eval ({metrics.get('n')} pairs, {task}): {shown}", flush=True)
    return metrics
