"""pretrain.py --jepa.objective stp end to end on CPU: resume, the predictor in the checkpoint,
a text store, counted short documents, bad values. Each run is compared with another run or
with counts recomputed from the batches, never with a hard-coded number."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DEEPSPEED, free_port
from test_train import ROOT, assert_same_curve, losses, metrics, run, store  # noqa: F401 (fixture)

STP = ["--train.log_every", "1", "--train.export", "false", "--train.final_eval", "false",
       "--data.seq_len", "128", "--data.micro_batch_rows", "4", "--optim.warmup_steps", "2",
       "--jepa.objective", "stp", "--lambda", "0.5"]


def _stp_curve(run_dir):
    return [(m["step"], m["loss"], m["lm_loss"], m["jepa_loss"], m["cosine"]) for m in metrics(run_dir)
            if "loss" in m]


def _predictor(run_dir, step):
    tag = os.path.join(run_dir, "checkpoints", f"step_{step:08d}", "mp_rank_00_model_states.pt")
    return torch.load(tag, map_location="cpu", weights_only=False)["module"]["stp_predictor.weight"]


def test_stp_with_predictor_resumes_equal_to_an_uninterrupted_run(store, tmp_path):  # noqa: F811
    """6 steps in one go vs 3 + resume: the same losses and cosines at every step (the spans
    are redrawn from (seed, epoch, step, rank), the predictor comes back from the checkpoint);
    the logged losses and counts are consistent; the export leaves the predictor out."""
    eval_jsonl = os.path.join(os.path.dirname(store), "test.jsonl")
    args = ["--data.train", store, "--steps", "6"] + STP + [
        "--jepa.stp_predictor", "true", "--jepa.stp_spans", "2", "--jepa.stp_sampler", "uniform",
        "--jepa.stp_max_len", "8", "--jepa.stp_weighting", "jaccard_like"]
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    run(args + ["--run-dir", full, "--train.save_every", "3", "--data.eval", eval_jsonl,
                "--train.eval_every", "3", "--train.export", "true"])
    run(args + ["--run-dir", split, "--train.stop_at", "3"])
    assert len(losses(split)) == 3
    run(args + ["--run-dir", split, "--resume", "auto"])
    assert_same_curve(_stp_curve(split), _stp_curve(full))

    m = [x for x in metrics(full) if "loss" in x]
    for x in m:
        assert abs(x["loss"] - (x["lm_loss"] + 0.5 * x["jepa_loss"])) < 1e-5 * x["loss"]
        assert x["stp/skipped_short"] == 0 and x["stp/spans"] == 2 * x["stp/documents"] > 0
        assert -1 <= x["cosine"] <= 1 and x["jepa_loss"] > 0
    assert m[-1]["jepa_loss"] < m[0]["jepa_loss"]
    held = [x for x in metrics(full) if "eval/jepa_loss" in x]
    assert [x["step"] for x in held] == [3, 6] and all(x["eval/jepa_loss"] > 0 for x in held)
    # the predictor is a trained part of the checkpoint, and not of the Hugging Face export
    assert not torch.equal(_predictor(full, 3), _predictor(full, 6))
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(full, "export"))
    assert not any("stp" in name for name in hf.state_dict())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(os.path.join(full, "tb"))
    ea.Reload()
    assert {"jepa_loss", "cosine", "stp/skipped_short", "stp/documents"} <= set(ea.Tags()["scalars"])


def _doc_lengths(batch):
    """Token count of every document of a packed batch (padding excluded), by hand."""
    out = []
    for row in batch.doc_ids.numpy():
        docs = row[row >= 0]
        out += np.unique(docs, return_counts=True)[1].tolist()
    return out


def _oracle_counts(flags, steps):
    """Documents and short ones (< 3 tokens) of the micro-batches the run trains on: the
    trainer's loader, counted from the rows themselves (not from the span sampler)."""
    from data_tools.store import open_store
    from data_tools.tokenizer import load_tokenizer, pred_ids
    from types import SimpleNamespace

    from megajepa.config import load
    from megajepa.train import make_loader

    cfg = load(flags)
    st = open_store(cfg.data.train)
    tok, _ = load_tokenizer(st.tokenizer_path)
    loader = make_loader(cfg, SimpleNamespace(train_store=st, pred_ids=pred_ids(tok),
                                              pad_id=tok.pad_token_id), 0, 1)
    counts = []
    for _ in range(steps):
        lengths = _doc_lengths(next(loader))
        counts.append((len(lengths), sum(n < 3 for n in lengths)))
    return counts


def _lm_store(path, docs, tok_dir):
    """An lm store of exactly these token-id documents (no bos/eos added), with a tokenizer."""
    from data_tools.store import StoreWriter
    from data_tools.tokenizer import load_tokenizer

    tok, _ = load_tokenizer(tok_dir)
    with StoreWriter(str(path), kind="lm", vocab_size=len(tok)) as w:
        for d in docs:
            w.add([d])
        w.commit(dict(tokenizer=dict(vocab_size=len(tok))), tokenizer=tok)
    return str(path)


def test_stp_on_a_text_store(store, tmp_path):  # noqa: F811
    """A text corpus through data_tools (long lines split into row-sized pieces), trained with
    STP on one rank: every document the rows hold is counted, none is short, one span each,
    and the unweighted STP loss is 1 - cosine."""
    with open(os.path.join(os.path.dirname(store), "train.jsonl")) as fh:
        texts = [json.loads(line)["messages"][-2]["content"] for line in fh]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(texts[i:i + 1 + i % 7]) for i in range(0, 300, 3)) + "\n")
    tok = os.path.join(os.path.dirname(store), "tok")
    text_store = str(tmp_path / "text_store")
    p = subprocess.run([sys.executable, "-m", "data_tools.preprocess", str(corpus), "--tokenizer", tok,
                        "--out", text_store, "--max-doc-tokens", "64"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    manifest = json.load(open(os.path.join(text_store, "manifest.json")))
    assert manifest["kind"] == "lm" and manifest["counts"]["split"]["pieces"] > 0
    d = str(tmp_path / "text_run")
    flags = ["--data.train", text_store, "--steps", "4", "--run-dir", d] + STP + ["--data.seq_len", "64"]
    run(flags)
    m = [x for x in metrics(d) if "loss" in x]
    assert [(x["stp/documents"], x["stp/skipped_short"]) for x in m] == _oracle_counts(flags, 4)
    for x in m:
        assert x["stp/spans"] == x["stp/documents"]
        assert abs(x["jepa_loss"] - (1 - x["cosine"])) < 1e-5


def test_short_documents_are_counted_and_an_all_short_store_is_refused(store, tmp_path):  # noqa: F811
    tok = os.path.join(os.path.dirname(store), "tok")
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, 200, size=int(n)).tolist() for n in rng.choice([1, 2, 2, 5, 9, 14], 120)]
    mixed = _lm_store(tmp_path / "mixed", docs, tok)
    d = str(tmp_path / "mixed_run")
    flags = ["--data.train", mixed, "--steps", "3", "--run-dir", d] + STP + ["--data.seq_len", "32"]
    run(flags)
    m = [x for x in metrics(d) if "loss" in x]
    assert [(x["stp/documents"], x["stp/skipped_short"]) for x in m] == _oracle_counts(flags, 3)
    assert all(x["stp/skipped_short"] > 0 and x["stp/spans"] == x["stp/documents"] - x["stp/skipped_short"]
               for x in m)

    short = _lm_store(tmp_path / "short", [d[:2] for d in docs], tok)
    d2 = str(tmp_path / "short_run")
    p = run(["--data.train", short, "--steps", "3", "--run-dir", d2] + STP + ["--data.seq_len", "32"],
            check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().count("\n") == 0 and "shorter than 3 tokens" in p.stderr
    assert not os.path.exists(os.path.join(d2, "checkpoints"))


@pytest.mark.parametrize("args,message", [
    (["--jepa.stp_spans", "0"], "jepa.stp_spans=0 must be >= 1"),
    (["--jepa.stp_max_len", "-1"], "jepa.stp_max_len=-1"),
    (["--jepa.mode", "three_pass"], "jepa.mode=single_pass"),
    (["--jepa.distance", "infonce"], "jepa.distance=cosine"),
    (["--jepa.stopgrad_target", "true"], "jepa.stopgrad_target=False"),
    (["--jepa.jepa_ratio", "0.5"], "jepa.jepa_ratio=1.0"),
    (["--jepa.sigreg", "0.1"], "jepa.sigreg=0.0"),
])
def test_bad_stp_settings_are_one_line(args, message):
    from megajepa.config import load

    with pytest.raises(ValueError, match="invalid configuration: .*" + message.replace(".", r"\.")) as e:
        load(["--jepa.objective", "stp"] + args)
    assert "\n" not in str(e.value)
    load(args)  # the same flags with views are not an error


def test_stp_config_maps_onto_the_span_spec():
    from megajepa import stp
    from megajepa.config import CHOICES, load, stp_spec

    assert CHOICES["jepa.stp_sampler"] == stp.SAMPLERS and CHOICES["jepa.stp_weighting"] == stp.WEIGHTINGS
    cfg = load(["--jepa.objective", "stp", "--jepa.stp_spans", "3", "--jepa.stp_max_len", "0",
                "--jepa.stp_sampler", "uniform", "--jepa.stp_weighting", "cosine_like",
                "--jepa.stp_predictor", "true"])
    assert stp_spec(cfg.jepa) == stp.StpSpec(spans=3, sampler="uniform", max_len=None,
                                             weighting="cosine_like", predictor=True)
    assert stp_spec(load(["--jepa.stp_max_len", "5"]).jepa).max_len == 5


def test_cli_bad_values_exit_2_with_one_line(tmp_path):
    for args, needle in ((["--jepa.stp_spans", "0"], "jepa.stp_spans"),
                         (["--jepa.stp_sampler", "middle"], "invalid choice")):
        p = run(["--jepa.objective", "stp", "--run-dir", str(tmp_path / "r")] + args, check=False)
        assert p.returncode == 2 and needle in p.stderr, p.stderr[-2000:]
        assert p.stderr.strip().count("\n") == 0
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.slow
def test_two_rank_zero3_stp_predictor(store, tmp_path):  # noqa: F811
    """Under ZeRO-3 the predictor is partitioned by the engine and trained; the run exports."""
    d = str(tmp_path / "z3")
    run(["--data.train", store, "--steps", "4", "--run-dir", d, "--ds-config", "ds_configs/zero3.json"]
        + STP + ["--jepa.stp_predictor", "true", "--train.export", "true"],
        launcher=DEEPSPEED + ["--num_gpus", "2", "--master_port", str(free_port())])
    m = metrics(d)
    assert len(m) == 4 and m[-1]["jepa_loss"] < m[0]["jepa_loss"]
    assert os.path.exists(os.path.join(d, "export", "config.json"))
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    state = get_fp32_state_dict_from_zero_checkpoint(os.path.join(d, "checkpoints"), tag="step_00000004")
    assert state["stp_predictor.weight"].shape == (64, 64)
