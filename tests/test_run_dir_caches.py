"""Nothing stale is reused from a run dir: the held-out store follows data.eval, its tokenizer
and template; a STOP file from an earlier run does not stop the next start."""
import json
import logging
import os
import time

import pytest

from data_tools import nlrx
from data_tools.store import open_store
from megajepa.data import EVAL_SOURCE, _tokenize_eval
from megajepa.train import STOP_FILE, remove_stale_stop


def write_eval(path, n, seed):
    path.write_text("".join(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n"
                            for r in nlrx.generate_pairs(n, seed=seed, split="test")))


def tokenize(path, tok, run_dir, system_in_plain=False):
    return open_store(_tokenize_eval(str(path), tok, str(run_dir), "plain", rank=0,
                                     system_in_plain=system_in_plain))


def test_eval_store_is_reused_while_its_sources_are_the_same(tok, tmp_path, caplog):
    ev = tmp_path / "eval.jsonl"
    write_eval(ev, 6, seed=1)
    first = tokenize(ev, tok, tmp_path / "run")
    manifest = tmp_path / "run" / "eval_store" / "manifest.json"
    built = manifest.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        again = tokenize(ev, tok, tmp_path / "run")
    assert len(again) == len(first) == 6 and manifest.stat().st_mtime_ns == built
    assert "rebuilding" not in caplog.text


@pytest.mark.parametrize("change", ["file", "tokenizer", "system prompt", "old run dir"])
def test_eval_store_is_rebuilt_with_one_line_when_its_sources_change(tok, tmp_path, caplog, change):
    ev, run = tmp_path / "eval.jsonl", tmp_path / "run"
    write_eval(ev, 6, seed=1)
    first = tokenize(ev, tok, run)
    system, tokenizer = False, tok
    if change == "file":
        write_eval(ev, 4, seed=2)           # another held-out set at the same path
    elif change == "tokenizer":             # a tokenizer retrained at another path
        from data_tools.tokenizer import train_sentencepiece
        texts = [r[f] for r in nlrx.generate_pairs(200, seed=9) for f in ("description", "regex")]
        tokenizer = str(tmp_path / "tok2")
        train_sentencepiece(texts, tokenizer, vocab_size=150, k=2)
    elif change == "system prompt":
        system = True                       # the plain prompts now carry the system prompt
    else:                                   # a run dir from before the key existed
        (run / EVAL_SOURCE).unlink()
    with caplog.at_level(logging.WARNING):
        second = tokenize(ev, tokenizer, run, system)
    assert "rebuilding" in caplog.text and caplog.text.count("rebuilding") == 1
    if change == "file":
        assert len(second) == 4 and len(first) == 6
    elif change == "tokenizer":
        assert second.manifest != first.manifest
    elif change == "system prompt":
        assert len(second.example(0).views[0]) > len(first.example(0).views[0])
    assert json.loads((run / EVAL_SOURCE).read_text())["system_in_plain"] == system


def test_a_stop_file_from_before_the_start_is_removed_with_one_line(tmp_path, caplog):
    stop = tmp_path / STOP_FILE
    stop.touch()
    old = time.time() - 3600
    os.utime(stop, (old, old))
    with caplog.at_level(logging.WARNING):
        assert remove_stale_stop(str(tmp_path), started=time.time() - 60)
    assert not stop.exists() and "STOP file from before this start" in caplog.text


def test_a_stop_file_touched_after_the_start_is_honoured(tmp_path):
    stop = tmp_path / STOP_FILE
    started = time.time() - 60
    stop.touch()
    assert not remove_stale_stop(str(tmp_path), started=started)
    assert stop.exists()
    assert not remove_stale_stop(str(tmp_path / "nowhere"))   # no file, nothing to do
