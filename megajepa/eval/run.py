"""Evaluate a causal LM on held-out (prompt, reference) pairs: generate, decode, score.

In:  a model and tokenizer (Hugging Face objects, e.g. from an exported folder or the
     trainer's live model), records in the chat-``messages`` format (system?/user/assistant)
     or already as ``{"system", "user", "assistant"}`` dicts, and a task name.
Out: one row per record (prompt, reference, prediction, the task's booleans) and the
     task's metrics (the means of those booleans), see :mod:`megajepa.eval.tasks`.

The prompt is :func:`data_tools.templates.prompt_ids`, the same text view training saw;
generation is greedy (:mod:`megajepa.eval.generate`), so results are deterministic.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_tools.errors import DataError
from data_tools.records import as_record, read_records  # noqa: F401 - part of this module's API
from data_tools.templates import prompt_ids
from megajepa.checkpoint import resolve_checkpoint
from megajepa.eval import tasks
from megajepa.eval.generate import generate_ids
from megajepa.export import export

__all__ = ["evaluate", "predict", "score_record", "read_records", "as_record", "load_model",
           "NotAModelDirectory"]


class NotAModelDirectory(DataError):
    """``--model`` does not exist or is not a folder ``from_pretrained`` can load."""


def score_record(task: str, prediction: str, rec: dict, db_dir=None,
                 sql_timeout_s: float = 5.0) -> dict:
    """The task's booleans for one prediction against record ``rec`` (see tasks.py)."""
    reference = rec["assistant"]
    if task == "nlrx":
        return tasks.score_nlrx(prediction, reference)
    if task == "gsm8k":
        return tasks.score_gsm8k(prediction, reference)
    if task == "classify":
        return tasks.score_classify(prediction, reference)
    if task == "sql":
        if db_dir is None:
            raise ValueError("task sql needs db_dir (--db-dir)")
        try:
            db = tasks.find_database(db_dir, rec.get("user", "") + rec.get("system", ""),
                                     rec.get("db_id"))
        except (ValueError, FileNotFoundError) as e:
            return {**tasks.match_text(prediction, reference), "execution": False,
                    "error": str(e)}
        return tasks.score_sql(prediction, reference, db, sql_timeout_s)
    raise ValueError(f"unknown task {task!r} (one of {', '.join(tasks.TASKS)})")


def predict(model, tokenizer, records: Iterable, task: str, *, template: str = "plain",
            batch_size: int = 64, max_new_tokens: int = 128, db_dir=None,
            sql_timeout_s: float = 5.0, system_in_plain: bool = False) -> list:
    """Generate for every record and score it; one row per record, in order."""
    if task not in tasks.TASKS:
        raise ValueError(f"unknown task {task!r} (one of {', '.join(tasks.TASKS)})")
    recs = [as_record(r) for r in records]
    prompts = [prompt_ids(tokenizer, r["user"], system=r.get("system"), template=template,
                          system_in_plain=system_in_plain) for r in recs]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; generation could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generated = generate_ids(model, prompts, eos_id=eos, pad_id=pad,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = []
    for rec, prompt, ids in zip(recs, prompts, generated):
        prediction = tokenizer.decode(ids, skip_special_tokens=True).strip()
        row = {"prompt": tokenizer.decode(prompt, skip_special_tokens=False),
               "reference": rec["assistant"], "prediction": prediction}
        row.update(score_record(task, prediction, rec, db_dir, sql_timeout_s))
        rows.append(row)
    return rows


def evaluate(model, tokenizer, records: Iterable, task: str, **kwargs) -> dict:
    """Metrics of ``model`` on ``records``: ``{"task", "n", <metric>: fraction, ...}``.

    For the trainer's end-of-training evaluation; works on the live model object. Takes
    the keyword arguments of :func:`predict`.
    """
    return tasks.aggregate(predict(model, tokenizer, records, task, **kwargs), task)


def load_model(path, *, device: Optional[str] = None, dtype: str = "auto"):
    """``(model, tokenizer)`` in eval mode on ``device``.

    ``path`` is a Hugging Face model folder, or a training run / checkpoint directory: a
    run's ``export/`` folder is used if present, else the latest complete checkpoint is
    exported to a temporary folder with :func:`megajepa.export.export` and loaded.
    """
    folder = Path(path)
    if not folder.exists():
        raise NotAModelDirectory(f"model {folder}: does not exist")
    if not (folder / "config.json").is_file() and (folder / "export" / "config.json").is_file():
        folder = folder / "export"
    if not (folder / "config.json").is_file():
        return _load_checkpoint(folder, device=device, dtype=dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model.to(device).eval()
    return model, tokenizer


def _load_checkpoint(folder: Path, *, device, dtype):
    """Export a training checkpoint to a temporary HF folder, load it, delete the folder."""
    try:
        resolve_checkpoint(str(folder))
    except (FileNotFoundError, OSError):
        raise NotAModelDirectory(
            f"not a Hugging Face model directory: {folder} (no config.json, no complete "
            f"checkpoint); export it with python -m megajepa.export") from None
    tmp = tempfile.mkdtemp(prefix="megajepa-eval-")
    try:
        print(f"exporting checkpoint {folder} for evaluation", flush=True)
        hf_dir = export(str(folder), str(Path(tmp) / "hf"), overwrite=True)
        return load_model(hf_dir, device=device, dtype=dtype)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
