"""A new user's first hour with ``pretrain.py`` (issue 12, items 4-7): raw JSONL as
``--data.train``, stopping a run (STOP file, signals), config errors before any write, and a
console that shows only what a user acts on.

Bad input is one ``error:`` line, exit 2, and no run directory left behind; runs are tiny
(2 layers, a few steps) and share one JSONL of generated NL-RX pairs.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import DEEPSPEED, free_port
from test_train import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data.seq_len", "128", "--data.micro_batch_rows", "4", "--optim.warmup_steps", "1",
        "--data.vocab_size", "256"]


def pretrain(args, *, env=None, timeout=600):
    """``pretrain.py args`` on one thread (test_train.run); the caller checks the exit code."""
    return run(args, env=dict(OMP_NUM_THREADS="1", **(env or {})), check=False, timeout=timeout)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(ln) for ln in fh if ln.strip()]


@pytest.fixture(scope="module")
def jsonl(nlrx_data):
    """400 generated NL-RX pairs as chat-messages JSONL (what data_tools reads), no store."""
    return nlrx_data.train_jsonl


# ------------------------------------------------------------------ item 4: raw JSONL, bad paths

@pytest.fixture(scope="module")
def stopped_run(jsonl, tmp_path_factory):
    """``--data.train pairs.jsonl`` with a STOP file already in the run dir: builds the store
    and tokenizer in the run dir, stops at the first read point (step 2)."""
    d = str(tmp_path_factory.mktemp("jsonl") / "run")
    os.makedirs(d)
    open(os.path.join(d, "STOP"), "w").close()
    later = time.time() + 3600   # as if touched after the start (an older one is stale, removed)
    os.utime(os.path.join(d, "STOP"), (later, later))
    args = ["--data.train", jsonl, "--steps", "6", "--run-dir", d, "--train.log_every", "2"] + TINY
    return d, args, pretrain(args)


def test_jsonl_train_is_preprocessed_into_the_run_dir(stopped_run, jsonl):
    d, _, p = stopped_run
    assert p.returncode == 0, p.stderr[-3000:]
    store = os.path.join(d, "data", "store")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("data: "))
    assert f"preprocessed {jsonl} into {store}" in line and "400 pair examples" in line, line
    assert "tokenizer trained on it" in line
    with open(os.path.join(store, "manifest.json")) as fh:
        assert json.load(fh)["counts"]["examples"] == 400
    assert os.path.isfile(os.path.join(d, "data", "tokenizer", "tokenizer.json"))


@pytest.mark.parametrize("flag,value,message", [
    ("--data.train", "missing.jsonl", "data.train missing.jsonl: does not exist"),
    ("--data.train", "a_dir", "data.train a_dir: a directory without manifest.json, so not a store"),
    ("--data.eval", "missing.jsonl", "data.eval missing.jsonl: does not exist"),
    ("--data.tokenizer", "tokk", "data.tokenizer tokk: no such directory"),
    ("--init-from", "no_model", "model.init_from no_model: does not exist"),
    ("--resume", "old_run", "train.resume old_run: no complete checkpoint found: the path does not exist"),
])
def test_missing_path_is_one_line_and_writes_nothing(flag, value, message, tmp_path, capsys,
                                                     monkeypatch):
    from megajepa.launch import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_dir").mkdir()
    assert main([flag, value, "--run-dir", "run"]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_bad_jsonl_train_is_one_line_and_leaves_no_run_dir(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]}
    bad.write_text(json.dumps(good) + "\n" + '{"messages": [}\n')
    d = tmp_path / "run"
    p = pretrain(["--data.train", str(bad), "--run-dir", str(d)] + TINY)
    assert p.returncode == 2 and f"{bad}:2:" in one_error_line(p.stderr)
    assert not d.exists()


def test_bad_jsonl_train_records_are_skipped_and_counted_with_on_bad_skip(jsonl, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(jsonl).read() + '{"messages": [}\n' + json.dumps({"messages": []}) + "\n")
    d = tmp_path / "run"
    p = pretrain(["--data.train", str(bad), "--data.on_bad", "skip", "--run-dir", str(d), "--steps", "1",
                  "--train.export", "false", "--train.final_eval", "false"] + TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "400 records" in p.stdout and "2 bad records skipped" in p.stdout, p.stdout[-3000:]


# ----------------------------------------------------------------------------- item 5: stopping

def test_stop_file_stops_saves_and_is_consumed(stopped_run):
    from megajepa.checkpoint import find_latest

    d, _, p = stopped_run
    ckpt = os.path.join(d, "checkpoints", "step_00000002")
    assert (f"stopped at step 2 by STOP file; checkpoint {ckpt}; resume with --resume auto"
            in p.stdout.splitlines()), p.stdout[-3000:]
    assert find_latest(os.path.join(d, "checkpoints")) == "step_00000002"
    assert not os.path.exists(os.path.join(d, "STOP"))
    assert [m["step"] for m in metrics(d)] == [2]


def test_resume_after_stop_goes_on_reuses_the_store_and_notes_the_skipped_eval(stopped_run):
    """The consumed STOP file does not stop the resumed run; the JSONL's store is reused; the
    export finds the built tokenizer; a custom store with no data.eval says the final eval
    is skipped and how to enable it."""
    d, args, first = stopped_run
    assert first.returncode == 0
    p = pretrain(args + ["--resume", "auto"])
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.splitlines()
    assert f"data: reusing the store {os.path.join(d, 'data', 'store')}" in p.stdout
    assert not any(ln.startswith("stopped at") for ln in out)
    assert [m["step"] for m in metrics(d)] == [2, 4, 6]
    assert os.path.isfile(os.path.join(d, "export", "config.json"))
    assert [ln for ln in out if ln.startswith("final eval skipped")] == [
        "final eval skipped: no held-out data; pass --data.eval <chat JSONL> to evaluate the "
        "export (or --train.final_eval false to drop this note)"]
    assert not os.path.exists(os.path.join(d, "final_eval.json"))


def test_sigterm_prints_the_stop_line(stopped_run, tmp_path):
    d0, _, first = stopped_run
    assert first.returncode == 0
    d = str(tmp_path / "sig")
    cmd = [sys.executable, os.path.join(ROOT, "pretrain.py"), "--data.train",
           os.path.join(d0, "data", "store"), "--steps", "5000", "--run-dir", d,
           "--train.log_every", "1", "--train.save_every", "5000"] + TINY
    p = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path, deadline = os.path.join(d, "metrics.jsonl"), time.time() + 300
    while (time.time() < deadline and p.poll() is None
           and not (os.path.exists(path) and len(metrics(d)) >= 2)):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    step = metrics(d)[-1]["step"]
    ckpt = os.path.join(d, "checkpoints", f"step_{step:08d}")
    assert (f"stopped at step {step} by SIGTERM; checkpoint {ckpt}; resume with --resume auto"
            in out.splitlines()), out[-3000:]
    assert os.path.isfile(os.path.join(ckpt, "COMPLETE"))


@pytest.mark.slow
def test_two_ranks_build_from_jsonl_and_stop_on_the_stop_file(jsonl, tmp_path):
    """deepspeed launcher, 2 gloo ranks: rank 0 builds the store (the other waits), a STOP
    file stops both at the same read point with one stop line, and the ranks print no
    library noise."""
    from megajepa.checkpoint import find_latest

    d = tmp_path / "two"
    d.mkdir()
    (d / "STOP").touch()
    later = time.time() + 3600   # as if touched after the start (an older one is stale, removed)
    os.utime(d / "STOP", (later, later))
    cmd = DEEPSPEED + ["--quiet", "--num_gpus", "2", "--master_port", str(free_port()),
           os.path.join(ROOT, "pretrain.py"), "--data.train", jsonl, "--steps", "6",
           "--run-dir", str(d), "--train.log_every", "2", "--data.micro_batch_rows", "2"] + TINY[2:]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu"),
                       capture_output=True, text=True, timeout=600)
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-3000:]
    assert text.count("stopped at step 2 by STOP file") == 1, text[-3000:]
    assert find_latest(str(d / "checkpoints")) == "step_00000002" and not (d / "STOP").exists()
    assert text.count("data: preprocessed") == 1
    for noise in ("FutureWarning", "built successfully", "Setting accelerator", "CUDA_VISIBLE_DEVICES"):
        assert noise not in text, noise


def test_two_ranks_print_one_error_line_and_both_exit_2(tmp_path):
    """A bad input under the launcher: one ``error:`` line for the launch, not one per rank."""
    cmd = DEEPSPEED + ["--quiet", "--num_gpus", "2", "--master_port", str(free_port()),
                       os.path.join(ROOT, "pretrain.py"), "--data.train", str(tmp_path / "none.jsonl"),
                       "--run-dir", str(tmp_path / "run")]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu"),
                       capture_output=True, text=True, timeout=300)
    errors = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("error:")]
    assert p.returncode == 2, p.stdout + p.stderr
    assert errors == [f"error: data.train {tmp_path / 'none.jsonl'}: does not exist (give a store from "
                      "python -m data_tools.preprocess, or a chat/group/text JSONL or .txt file)"], errors
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- item 6: config errors first

def test_yaml_bad_value_names_the_file_and_the_key(tmp_path):
    from megajepa.config import load

    y = tmp_path / "c.yaml"
    for text, message in [
        ("data: {seq_len: abc}\n", f"{y}: data.seq_len must be an integer, got 'abc'"),
        ("train: {steps: null}\n", f"{y}: train.steps must be an integer, got None"),
        ("train: {steps: true}\n", f"{y}: train.steps must be an integer, got True"),
        ("train: {export: maybe}\n", f"{y}: train.export must be true/false, got 'maybe'"),
        ("model: {preset: [a]}\n", f"{y}: model.preset must be a string, got ['a']"),
        ("jepa: {k: 2\n", f"{y}:2:1: invalid YAML"),
        ("data: {seq_len: 4}\n", "data.seq_len=4 is too small"),
        ("optim: {lr: -1.0}\n", f"(optim.lr set in {y})"),
    ]:
        y.write_text(text)
        with pytest.raises(ValueError) as e:
            load(["--config", str(y)])
        assert message in str(e.value) and "\n" not in str(e.value), (text, str(e.value))
    y.write_text("data: {seq_len: 4}\n")
    with pytest.raises(ValueError, match=f"set in {y}"):
        load(["--config", str(y)])
    y.write_text("optim: {lr: 1e-3}\ndata: {seq_len: '64', eval: null}\n")  # PyYAML's string 1e-3
    cfg = load(["--config", str(y)])
    assert (cfg.optim.lr, cfg.data.seq_len, cfg.data.eval) == (1e-3, 64, None)
    y.write_text("data: {seq_len: 4}\n")  # a flag that fixes it: no file to blame
    assert load(["--config", str(y), "--data.seq_len", "64"]).data.seq_len == 64


def test_config_that_fails_on_the_data_writes_nothing(tmp_path):
    """seq_len 8 passes the static checks but not the data's shortest example: it fails after
    the embedded data is generated, before config.yaml, and the first start leaves no dir."""
    d = tmp_path / "run"
    p = pretrain(["--data.seq_len", "8", "--run-dir", str(d), "--data.embedded_examples", "100",
                  "--data.embedded_eval", "4"])
    assert p.returncode == 2 and "data.seq_len=8 is below the shortest example" in one_error_line(p.stderr)
    assert p.stdout == "" and not d.exists()


def test_embedded_eval_0_means_no_held_out_eval(tmp_path):
    from megajepa import data
    from megajepa.config import load

    cfg = load(["--data.embedded_examples", "60", "--data.embedded_eval", "0"])
    run = data.prepare(cfg, str(tmp_path), rank=0)
    assert run.eval_records is None and run.eval_store is None and run.eval_path is None
    assert len(run.train_store) == 60 and "none held out" in run.description
    cfg = load(["--data.embedded_examples", "60", "--data.embedded_eval", "3"])  # options changed: rebuilt
    run = data.prepare(cfg, str(tmp_path), rank=0)
    assert len(run.eval_records) == 3


# ------------------------------------------------------------------------------- item 7: noise

NOISE = ("Setting accelerator", "built successfully", "resolved config", "Processing zero checkpoint",
         "Reconstructed fp32", "Loading checkpoint shards", "Writing model shards", "Loading weights",
         " INFO ", "epoch 0:", "Warning", "saved checkpoint")


def test_console_shows_what_a_user_acts_on(tmp_path):
    d = str(tmp_path / "run")
    p = pretrain(["--run-dir", d, "--steps", "4", "--train.log_every", "2",
                  "--data.embedded_examples", "200", "--data.embedded_eval", "4",
                  "--train.max_new_tokens", "8"])
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout + p.stderr
    for noise in NOISE:
        assert noise not in text, (noise, text)
    assert p.stderr == ""
    lines = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("train:")]  # the bar
    config = os.path.join(d, "config.yaml")
    assert lines[0] == (f"run dir {d}: config {config}, log {os.path.join(d, 'train.log')}, "
                        f"metrics: tensorboard --logdir {os.path.join(d, 'tb')}")
    assert lines[1].startswith("data: the embedded NL-RX-style dataset: 200 generated pairs")
    assert lines[2] == f"exported Hugging Face model to {os.path.join(d, 'export')}"
    assert lines[3].startswith("final held-out eval (4 pairs, nlrx): exact=")
    assert lines[4].startswith("logs: ") and len(lines) == 5, lines
    from megajepa.config import from_dict, load
    with open(config) as fh:  # the full config is in the file the console names
        assert from_dict(yaml.safe_load(fh)) == load(["--run-dir", d, "--steps", "4", "--train.log_every", "2",
                                                      "--data.embedded_examples", "200",
                                                      "--data.embedded_eval", "4", "--train.max_new_tokens", "8"])
    with open(os.path.join(d, "train.log")) as fh:  # the details went to the run's log
        log = fh.read()
    # (one CPU process: auto is ZeRO-0, whose export reads the module states without zero_to_fp32)
    assert "saved checkpoint" in log and "train.ds_config=auto: ds_configs/zero0.json" in log


def test_quiet_keeps_warnings_and_shows_output_on_failure(capsys):
    import warnings

    from megajepa.console import quiet

    with pytest.warns(UserWarning, match="real"):
        with quiet("lib"):
            print("chatter")
            warnings.warn("real")
    assert capsys.readouterr().out == ""
    with pytest.raises(RuntimeError):
        with quiet("lib"):
            print("context for the failure")
            raise RuntimeError("boom")
    assert "context for the failure" in capsys.readouterr().err
