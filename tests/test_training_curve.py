"""pretrain.py's loss curve against bounds that a wrong loop breaks (supersedes the
"last loss < first loss" check of test_train.py::test_loss_falls_and_metrics_are_logged).

* Before any update (step 1) the LM loss of a random-init model is the entropy of a uniform
  guess, ln V: its logits are near zero (|logit| ~ 0.02 * sqrt(d)).
* Every logged step composes as ``loss = gamma * lm_loss + lambda * jepa_loss`` and, with the
  cosine distance, ``jepa_loss = 1 - cosine``.
* After 60 steps the LM loss is well below the unigram entropy H of the label tokens (the
  best loss without reading the context): the model learned from the text, the optimizer,
  the LR schedule and the labels work. Measured margin: final ~2.2 nats vs H ~3.9.
"""
import json
import math
import os

import numpy as np
import pytest

from test_train import run

GAMMA, LAMBDA, STEPS = 1.0, 0.5, 60


@pytest.fixture(scope="module")
def curve(nlrx_data, tmp_path_factory):
    """A 60-step run (lr 3e-3, seq_len 128, 4 rows) on 400 generated NL-RX pairs
    (conftest.nlrx_data)."""
    from data_tools.store import open_store

    store = nlrx_data.store
    run_dir = str(tmp_path_factory.mktemp("curve") / "run")
    run(["--data.train", store, "--run-dir", run_dir, "--steps", str(STEPS), "--lr", "3e-3",
         "--optim.warmup_steps", "5", "--data.seq_len", "128", "--data.micro_batch_rows", "4",
         "--k", "2", "--gamma", str(GAMMA), "--lambda", str(LAMBDA),
         "--train.log_every", "1", "--train.save_every", "1000", "--train.export", "false",
         "--train.final_eval", "false"], env={"OMP_NUM_THREADS": "1"})
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        steps = [m for m in map(json.loads, filter(str.strip, fh)) if "loss" in m]
    st = open_store(store)
    labels = np.concatenate([st.views(i)[1] for i in range(len(st))])  # pair labels: the code
    p_tok = np.bincount(labels) / len(labels)
    unigram = float(-(p_tok[p_tok > 0] * np.log(p_tok[p_tok > 0])).sum())
    return steps, st.manifest["tokenizer"]["vocab_size"], unigram


def test_first_step_loss_is_the_uniform_guess(curve):
    steps, vocab, _ = curve
    assert steps[0]["step"] == 1
    assert abs(steps[0]["lm_loss"] - math.log(vocab)) < 0.05, (steps[0]["lm_loss"], vocab)


def test_every_step_composes_its_loss(curve):
    steps, _, _ = curve
    assert [m["step"] for m in steps] == list(range(1, STEPS + 1))
    for m in steps:
        assert all(math.isfinite(m[k]) for k in ("loss", "lm_loss", "jepa_loss", "cosine"))
        assert m["loss"] == pytest.approx(GAMMA * m["lm_loss"] + LAMBDA * m["jepa_loss"],
                                          abs=1e-4), m
        assert m["jepa_loss"] == pytest.approx(1 - m["cosine"], abs=1e-4), m
        assert 0 <= m["jepa_loss"] <= 2


def test_loss_ends_well_below_the_unigram_entropy(curve):
    steps, vocab, unigram = curve
    assert 3.0 < unigram < math.log(vocab)  # the bound is informative for this data
    final = float(np.mean([m["lm_loss"] for m in steps[-10:]]))
    assert final < unigram - 0.5, f"LM loss {final:.3f} after {STEPS} steps; unigram H {unigram:.3f}"
    assert np.mean([m["lm_loss"] for m in steps[20:30]]) < steps[0]["lm_loss"] - 1.0
