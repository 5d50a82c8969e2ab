"""pretrain.py end to end on CPU: DeepSpeed (gloo), resume, signals, crash-safe saves, export.

Runs are tiny (a 2-layer model, a few steps); each compares against another run, never
against a hard-coded number.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import DEEPSPEED, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--train.log_every", "1", "--train.export", "false", "--train.final_eval", "false",
          "--data.seq_len", "128", "--data.micro_batch_rows", "4", "--optim.warmup_steps", "2",
          "--k", "2", "--lbd", "1.0"]


@pytest.fixture(scope="module")
def store(nlrx_data):
    """A small NL-RX store + tokenizer made by data_tools (conftest.nlrx_data)."""
    return nlrx_data.store


def run(args, *, env=None, check=True, launcher=None, timeout=600, fault=None):
    """``pretrain.py args``; ``fault`` runs it through tests/fault_run.py with that fault."""
    script = ["pretrain.py"] if fault is None else [os.path.join("tests", "fault_run.py"), fault]
    cmd = (launcher or [sys.executable]) + [os.path.join(ROOT, script[0])] + script[1:] + args
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def metrics(run_dir):
    """metrics.jsonl's records, parsed as strict JSON (NaN / Infinity are not JSON)."""
    def refuse(name):
        raise ValueError(f"metrics.jsonl holds {name}, which is not JSON")
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line, parse_constant=refuse) for line in fh if line.strip()]


def losses(run_dir):
    return [(m["step"], m["loss"], m["lm_loss"], m["jepa_loss"]) for m in metrics(run_dir)
            if "loss" in m]


def assert_same_curve(a, b, tol=1e-5):
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (s, *x), (_, *y) in zip(a, b):
        for u, v in zip(x, y):
            assert abs(u - v) <= tol * max(1.0, abs(u)), (s, x, y)


@pytest.fixture(scope="module")
def reference_run(store, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ref") / "run")
    run(["--data.train", store, "--steps", "8", "--run-dir", d, "--train.save_every", "4",
         "--data.eval", os.path.join(os.path.dirname(store), "test.jsonl"),
         "--train.eval_every", "4"] + COMMON)
    return d


def test_split_run_with_resume_matches_uninterrupted(store, reference_run, tmp_path):
    d = str(tmp_path / "split")
    args = ["--data.train", store, "--steps", "8", "--run-dir", d] + COMMON
    run(args + ["--train.stop_at", "4"])
    assert len(losses(d)) == 4
    run(args + ["--resume", "auto"])
    assert_same_curve(losses(d), losses(reference_run))


def test_loss_falls_and_metrics_are_logged(reference_run):
    m = [x for x in metrics(reference_run) if "loss" in x]
    assert m[-1]["loss"] < m[0]["loss"]
    for key in ("lm_loss", "jepa_loss", "cosine", "lr", "grad_norm", "tokens_per_s",
                "samples_per_s", "packing_efficiency", "step_time_s", "peak_memory_gb"):
        assert key in m[-1]
    assert 0 < m[-1]["packing_efficiency"] <= 1
    assert all(x["grad_norm"] is not None and x["grad_norm"] > 0 for x in m)  # ZeRO-0 keeps DeepSpeed's norm
    held = [x for x in metrics(reference_run) if "eval/lm_loss" in x]
    assert [x["step"] for x in held] == [4, 8] and held[1]["eval/lm_loss"] < held[0]["eval/lm_loss"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(os.path.join(reference_run, "tb"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert {"loss", "mfu", "eval/lm_loss", "diagnostics/lstsq_residual"} <= set(tags)
    assert os.path.exists(os.path.join(reference_run, "config.yaml"))


def test_held_out_readouts_match_the_exported_model(reference_run, tmp_path):
    """The last held-out eval's collapse metrics (read from the hidden states the engine's
    held-out forward returns) against the exported model's read-outs of the same examples,
    computed apart (collapse.jepa_readouts: its own rows, one process)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_tools.store import open_store
    from megajepa.collapse import collapse_metrics, jepa_readouts
    from megajepa.export import export
    from megajepa.loader import PackedLoader

    out = str(tmp_path / "hf")
    export(reference_run, out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    pad = AutoTokenizer.from_pretrained(out).pad_token_id
    store = open_store(os.path.join(reference_run, "eval_store"))
    pred = store.manifest["pred_ids"][:2]
    loader = PackedLoader(store, seq_len=128, micro_batch_rows=4, k=2, pred_ids=pred, pad_id=pad,
                          seed=0, jepa_ratio=1.0)
    ids = [i for s in range(min(4, loader.steps_per_epoch)) for row in loader.rows_of(0, s)
           for i in row]
    with torch.no_grad():
        p, t = jepa_readouts(model, [store.example(i) for i in ids], k=2, pred_ids=pred,
                             pad_id=pad, seq_len=128)
    want = collapse_metrics(p, t)
    held = [x for x in metrics(reference_run) if "eval/paired_cos" in x][-1]
    assert held["step"] == 8 and held["eval/pairs"] == want["n"] > 2
    for key in ("paired_cos", "code_code_cos", "pred_pred_cos", "eff_rank_code", "eff_rank_pred"):
        assert abs(held[f"eval/{key}"] - want[key]) <= 1e-4 * max(1.0, abs(want[key])), key


def test_micro_batch_split_1x4_equals_4x1(store, reference_run, tmp_path):
    d = str(tmp_path / "gas")
    args = ["--data.train", store, "--steps", "8", "--run-dir", d] + COMMON
    args[args.index("--data.micro_batch_rows") + 1] = "1"
    run(args + ["--optim.grad_accum", "4"])
    assert_same_curve(losses(d), losses(reference_run), tol=2e-5)


def test_skipped_one_rank_allreduce_changes_nothing(store, reference_run, tmp_path):
    """The reference run (ZeRO-0, one process) skips DeepSpeed's all-reduce of the gradients
    with themselves; a ``communication_data_type`` (fp32, the gradients' own) keeps it: the
    same curve to the last bit."""
    cfg = json.load(open(os.path.join(ROOT, "ds_configs", "zero0.json")))
    cfg["communication_data_type"] = "fp32"
    path = tmp_path / "zero0_allreduce.json"
    path.write_text(json.dumps(cfg))
    d = str(tmp_path / "allreduce")
    run(["--data.train", store, "--steps", "8", "--run-dir", d, "--train.ds_config", str(path)]
        + COMMON)
    log = open(os.path.join(reference_run, "train.log")).read()
    assert "train.ds_config=auto: ds_configs/zero0.json" in log and "all-reduce skipped" in log
    assert "all-reduce skipped" not in open(os.path.join(d, "train.log")).read()
    assert_same_curve(losses(d), losses(reference_run), tol=0.0)


def test_skips_allreduce_only_where_it_is_the_identity():
    from types import SimpleNamespace

    from megajepa.train import skips_allreduce

    one, two = SimpleNamespace(dp_world_size=1), SimpleNamespace(dp_world_size=2)
    zero = lambda s, **kw: {"zero_optimization": {"stage": s}, **kw}  # noqa: E731
    assert skips_allreduce(one, zero(0))
    assert not skips_allreduce(two, zero(0))
    assert not skips_allreduce(one, zero(1))  # ZeRO-1's reduce fills its flat buffer
    assert not skips_allreduce(one, zero(0, communication_data_type="bf16"))


def test_sigterm_saves_and_resume_continues_the_curve(store, reference_run, tmp_path):
    d = str(tmp_path / "sig")
    args = ["--data.train", store, "--steps", "8", "--run-dir", d] + COMMON
    cmd = [sys.executable, os.path.join(ROOT, "pretrain.py")] + args + ["--train.save_every", "100"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    path = os.path.join(d, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(path) and len(open(path).readlines()) >= 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out[-3000:]
    from megajepa.checkpoint import find_latest
    tag = find_latest(os.path.join(d, "checkpoints"))
    stopped = len(losses(d))
    assert tag == f"step_{stopped:08d}" and 2 <= stopped < 8
    run(args + ["--resume", "auto"])
    assert_same_curve(losses(d), losses(reference_run))


def test_killed_save_leaves_previous_checkpoint_loadable(store, reference_run, tmp_path):
    from megajepa.checkpoint import find_latest
    from megajepa.export import export

    d = str(tmp_path / "crash")
    args = ["--data.train", store, "--steps", "8", "--run-dir", d, "--train.save_every", "4"] + COMMON
    p = run(args, fault="kill_save:8", check=False)
    assert p.returncode == 137
    root = os.path.join(d, "checkpoints")
    assert os.path.isdir(os.path.join(root, "step_00000008"))  # the partial save is there...
    assert find_latest(root) == "step_00000004"                  # ...but never chosen
    export(root, str(tmp_path / "hf"))
    run(args + ["--resume", "auto"])
    assert find_latest(root) == "step_00000008"
    assert_same_curve(losses(d), losses(reference_run))


def test_nonfinite_loss_stop_and_skip(store, tmp_path):
    """stop: the read point after the NaN (step 4, log_every 2) names step 3, exits 3 and saves
    nothing past step 2. skip: the update of step 3 is dropped and training goes on."""
    from megajepa.checkpoint import find_latest

    d = str(tmp_path / "nan")
    args = ["--data.train", store, "--steps", "6", "--run-dir", d] + COMMON + [
        "--train.log_every", "2", "--train.save_every", "2"]
    p = run(args, fault="nan_loss:3", check=False)
    assert p.returncode == 3 and "non-finite loss at step 3" in p.stderr, p.stderr[-2000:]
    assert find_latest(os.path.join(d, "checkpoints")) == "step_00000002"
    assert [m["step"] for m in metrics(d)] == [2]
    d2 = str(tmp_path / "nan_skip")
    args2 = ["--data.train", store, "--steps", "4", "--run-dir", d2,
             "--train.on_nonfinite", "skip"] + COMMON
    p = run(args2, fault="nan_loss:3")
    assert "non-finite loss at step 3" in p.stdout + p.stderr
    m = metrics(d2)
    assert [x["skipped_steps"] for x in m] == [0, 0, 1, 1]
    assert all(torch.isfinite(torch.tensor(x["lm_loss"])) for x in m if x["step"] != 3)


@pytest.mark.parametrize("args,message", [
    (["--k", "9"], "predictor tokens"),
    (["--data.seq_len", "10"], "below the shortest example"),
    (["--preset", "gpt5"], "unknown"),
    (["--optim.warmup_steps", "99"], "warmup_steps"),
    (["--train.on_nonfinite", "skip", "--ds-config", "ds_configs/zero0.json"], "stage"),
])
def test_impossible_configs_fail_before_work(store, tmp_path, args, message):
    d = str(tmp_path / "bad")
    p = run(["--data.train", store, "--steps", "4", "--run-dir", d] + args, check=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
    assert not os.path.exists(os.path.join(d, "checkpoints"))


def test_ds_config_contradiction_is_an_error(tmp_path):
    from megajepa.config import Config
    from megajepa.ds_config import resolve

    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2,
                               "zero_optimization": {"stage": 1}}))
    cfg = Config()
    cfg.train.ds_config = str(bad)
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=2.*data.micro_batch_rows"):
        resolve(cfg, 1, bf16=False)
    cfg.data.micro_batch_rows = 2
    ds = resolve(cfg, 4, bf16=False)
    assert ds["train_batch_size"] == 2 * 4 and ds["gradient_accumulation_steps"] == 1


def test_yaml_then_flags_and_help(tmp_path):
    from megajepa.config import build_parser, load

    y = tmp_path / "c.yaml"
    y.write_text("jepa:\n  k: 3\n  lbd: 2.0\noptim:\n  lr: 8.0e-5\n")
    cfg = load(["--config", str(y), "--lambda", "0.5"])
    assert (cfg.jepa.k, cfg.jepa.lbd, cfg.optim.lr) == (3, 0.5, 8e-5)
    with pytest.raises(ValueError, match="unknown setting"):
        y.write_text("jepa:\n  kk: 3\n")
        load(["--config", str(y)])
    text = build_parser().format_help()
    for word in ("--gamma", "--lambda", "--k", "--jepa.k", "predictor tokens"):
        assert word in text


@pytest.mark.slow
def test_two_rank_zero3_loss_falls(store, tmp_path):
    d = str(tmp_path / "z3")
    run(["--data.train", store, "--steps", "6", "--run-dir", d, "--ds-config",
         "ds_configs/zero3.json"] + COMMON + ["--train.export", "true"],
        launcher=DEEPSPEED + ["--num_gpus", "2", "--master_port", str(free_port())])
    m = metrics(d)
    assert len(m) == 6 and m[-1]["loss"] < m[0]["loss"]
    assert os.path.exists(os.path.join(d, "export", "config.json"))


EXPORT_CHECK = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from megajepa.config import load
from megajepa.launch import run as train  # the loop, then the export
cfg = load(sys.argv[1:])
cfg.train.export = True
result = train(cfg)                      # in process: keep the trained model object
hf = AutoModelForCausalLM.from_pretrained(result["export"])
tok = AutoTokenizer.from_pretrained(result["export"])
ids = torch.tensor([tok.encode("lines with the string dog")])
with torch.no_grad():
    torch.testing.assert_close(hf(ids).logits, result["module"].lm(ids).logits, atol=1e-5, rtol=1e-5)
    out = hf.generate(ids, max_new_tokens=4, do_sample=False)
assert out.shape[1] > ids.shape[1]
print("EXPORT_MATCHES")
"""


def test_export_matches_trained_model(store, tmp_path):
    """Train a few steps, export, reload with from_pretrained: the same logits as the trained
    model object (in a child process, which owns the process group)."""
    d = str(tmp_path / "exp")
    p = subprocess.run([sys.executable, "-c", EXPORT_CHECK, "--data.train", store, "--steps", "3",
                        "--run-dir", d] + COMMON, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and "EXPORT_MATCHES" in p.stdout, p.stderr[-3000:]


def test_finetune_from_hf_checkpoint_with_chat_template(store, tmp_path):
    """--init-from a local HF model whose tokenizer lacks <pred_i>: preprocess adds them, the
    trainer resizes the embeddings, trains with the chat template and exports."""
    data = os.path.join(os.path.dirname(store), "train.jsonl")
    hf, st, d = str(tmp_path / "hf"), str(tmp_path / "store"), str(tmp_path / "ft")
    for cmd in ([sys.executable, "scripts/make_tiny_hf.py", "--data", data, "--out", hf,
                 "--vocab-size", "200"],
                [sys.executable, "-m", "data_tools.preprocess", data, "--tokenizer", hf,
                 "--template", "chat", "--out", st]):
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    run(["--init-from", hf, "--data.train", st, "--data.template", "chat", "--steps", "3",
         "--run-dir", d] + COMMON + ["--train.export", "true"])
    from transformers import AutoConfig, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.join(d, "export"))
    assert "<pred_2>" in tok.get_vocab()
    assert AutoConfig.from_pretrained(os.path.join(d, "export")).vocab_size >= len(tok)
    m = metrics(d)
    assert len(m) == 3 and all(x["jepa_loss"] is not None for x in m)


def test_export_cli_and_resume_errors(reference_run, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "megajepa.export", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    out = str(tmp_path / "hf")
    assert cli(reference_run, out).returncode == 0
    again = cli(reference_run, out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    missing = cli(str(tmp_path / "nope"), str(tmp_path / "hf2"))
    assert missing.returncode == 2 and "nope: does not exist" in missing.stderr
    assert not os.path.exists(tmp_path / "hf2")
    p = run(["--resume", str(tmp_path / "nope"), "--steps", "2", "--run-dir", str(tmp_path / "r")],
            check=False)
    assert p.returncode == 2 and "no complete checkpoint" in p.stderr


def test_resume_into_another_module_is_one_line_and_writes_nothing(store, reference_run, tmp_path):
    """A checkpoint resumes only into a module with the same parameters (here another preset;
    LoRA rank, SIGReg head and STP predictor likewise), refused before DeepSpeed's load."""
    d = tmp_path / "other"
    p = run(["--data.train", store, "--resume", reference_run, "--steps", "10", "--run-dir", str(d),
             "--model.preset", "mini"] + COMMON, check=False)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("error: train.resume: the checkpoint ") and \
        "model.preset 'tiny' there, 'mini' here" in lines[0]
    assert not d.exists()


def test_fresh_start_in_a_used_run_dir_sets_old_checkpoints_aside(store, tmp_path):
    d = str(tmp_path / "again")
    args = ["--data.train", store, "--steps", "2", "--run-dir", d] + COMMON
    run(args)
    run(args + ["--steps", "3"])
    aside = [f for f in os.listdir(d) if f.startswith("checkpoints.replaced-")]
    assert len(aside) == 1 and os.listdir(os.path.join(d, aside[0]))
    from megajepa.checkpoint import find_latest
    assert find_latest(os.path.join(d, "checkpoints")) == "step_00000003"
    assert [m["step"] for m in metrics(d)] == [1, 2, 3]   # one clean run in metrics.jsonl


def test_attended_pairs_counts_the_mask():
    """The loader's host-side count equals the allowed (q, kv) pairs of the dense mask."""
    from conftest import PRED_IDS, random_examples
    from megajepa.layout import PAD_DOC, pack
    from megajepa.masking import dense_mask
    from megajepa.metrics import attended_pairs

    for seed, min_rows in ((0, 0), (1, 0), (2, 12)):  # (2, 12): empty padding rows too
        b = pack(random_examples(30, seed=seed), 64, k=2, pred_ids=PRED_IDS, pad_id=0,
                 min_rows=min_rows)
        mask = dense_mask(b.doc_ids, b.roles).reshape(b.shape[0], 64, 64)
        want = int((mask & (b.doc_ids != PAD_DOC)[:, :, None]).sum())
        assert attended_pairs(b.doc_ids, b.roles) == attended_pairs(b.doc_ids.numpy(), b.roles) == want


def test_attended_pairs_under_a_sliding_window_counts_the_windowed_mask():
    """With a window over positions (the layout's every form: pair, group, lm, predictors,
    read_at last, reverse), the count equals the windowed dense mask's; the layer mean weighs
    each window by its layers."""
    from conftest import PRED_IDS, random_examples
    from megajepa.layout import PAD_DOC, pack
    from megajepa.masking import dense_mask
    from megajepa.metrics import attended_pairs, layer_mean_pairs

    def mask_count(b, w):
        rows, s = b.shape
        m = dense_mask(b.doc_ids, b.roles, b.position_ids, w).reshape(rows, s, s)
        return int((m & (b.doc_ids != PAD_DOC)[:, :, None]).sum())

    for seed, kw in ((0, {}), (1, dict(read_at="last")), (2, dict(reverse=True)),
                     (3, dict(read_at="last", reverse=True, min_rows=6))):
        b = pack(random_examples(30, seed=seed, max_len=40), 128, k=3, pred_ids=PRED_IDS, pad_id=0, **kw)
        full = attended_pairs(b.doc_ids, b.roles)
        for w in (1, 3, 8, 1000):
            got = attended_pairs(b.doc_ids, b.roles, b.position_ids, w)
            assert got == mask_count(b, w)
            assert (got < full) if w < 40 else (got == full)
        mean = layer_mean_pairs(b.doc_ids, b.roles, b.position_ids, [None, 8, 8, None, 3])
        assert mean == pytest.approx((2 * full + 2 * mask_count(b, 8) + mask_count(b, 3)) / 5)


def _tally_run(device, world=1, rank=0, grad_accum=2, on_nonfinite="stop"):
    from types import SimpleNamespace

    from megajepa.config import Config
    from megajepa.metrics import FlopCounter
    from megajepa.model import build_model

    cfg = Config()
    cfg.optim.grad_accum, cfg.train.on_nonfinite = grad_accum, on_nonfinite
    engine = SimpleNamespace(skipped_steps=0, get_global_grad_norm=lambda: 1.0)
    return SimpleNamespace(
        cfg=cfg, world=world, rank=rank, device=torch.device(device), start=0, engine=engine,
        scheduler=SimpleNamespace(get_last_lr=lambda: [1e-3]),
        loader=SimpleNamespace(epoch=0, seen={"examples": 0, "tokens": 0}),
        flops=FlopCounter(build_model(preset="tiny", vocab_size=64).config), peak_tflops=0.0,
        is_main=True, ckpt_root="ckpt", stp=None)


def _stats(labels, pairs):
    from types import SimpleNamespace
    return SimpleNamespace(stp=None, num_pairs=pairs, stats=dict(real_tokens=10, examples=2, attended_pairs=40, capacity=16,
                                      label_tokens=labels, pairs=pairs))


def test_tally_never_reads_the_device_between_read_points(monkeypatch):
    """On the meta device any host read raises: a step's counts and sums stay on the device."""
    from megajepa import train as tr

    monkeypatch.setattr(tr.dist, "all_reduce", lambda t, *a, **k: None)
    tally = tr.Tally(_tally_run("meta", world=2, rank=1))
    lm_den, jepa_den = tally.begin_step([_stats(3, 1), _stats(5, 3)])
    assert lm_den.device.type == jepa_den.device.type == "meta"
    for _ in range(2):
        x = torch.ones((), device="meta")
        tally.add(1, x, x, x, x, 2)
    with pytest.raises(Exception):  # the read is where the host sees values
        tally.read(1, None)


def test_tally_global_means_and_first_nonfinite_step(monkeypatch):
    """Oracle: the global means of hand-made micro-batch sums, as the engine would scale them."""
    from megajepa import train as tr

    monkeypatch.setattr(tr.dist, "all_reduce", lambda t, *a, **k: None)  # a world of one
    run = _tally_run("cpu")
    tally = tr.Tally(run)
    lm_den, jepa_den = tally.begin_step([_stats(3, 1), _stats(5, 3)])
    assert (lm_den.item(), jepa_den.item()) == (8 / 2, 4 / 2)  # global count / (gas * world)
    for lm_sum, jepa_sum, cos, pairs in ((6.0, 1.0, 0.5, 1), (10.0, 3.0, 0.9, 3)):
        lm, jepa = torch.tensor(lm_sum) / lm_den, torch.tensor(jepa_sum) / jepa_den
        tally.add(1, lm + jepa, lm, jepa, torch.tensor(cos), pairs)
    m, flags = tally.read(1, None)
    assert m["lm_loss"] == pytest.approx(16 / 8) and m["jepa_loss"] == pytest.approx(4 / 4)
    assert m["loss"] == pytest.approx(3.0) and m["cosine"] == pytest.approx((0.5 + 2.7) / 4)
    assert flags == {"nonfinite": 0, "first_nonfinite_step": 0, "since": 0, "signal": False}
    tr.check_finite(run, 1, flags, m)
    tally.restart(1)
    for step, value in ((2, float("nan")), (3, 1.0)):  # a NaN at step 2, read at step 3
        tally.begin_step([_stats(3, 1), _stats(5, 3)])
        for _ in range(2):
            x = torch.tensor(value)
            tally.add(step, x, x, x, x, 1)
    m, flags = tally.read(3, signal=15)
    assert flags == {"nonfinite": 2, "first_nonfinite_step": 2, "since": 1, "signal": True}
    assert m["loss"] == pytest.approx(1.0) and m["step_time_s"] > 0
    with pytest.raises(tr.NonFiniteLoss, match="non-finite loss at step 2"):
        tr.check_finite(run, 3, flags, m)
    run.cfg.train.on_nonfinite = "skip"
    tr.check_finite(run, 3, flags, m)  # skip: reported, not raised
