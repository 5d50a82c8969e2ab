"""pretrain.py under the epoch budget (train.epochs, data.micro_batch_examples) with SIGReg and
the paper's linear schedule: the derived steps, the cumulative examples logged, equal examples
for lambda 0 and 2, resume, the held-out collapse metrics against an oracle, and (slow) the
same loss on 2 ranks as on 1 with the same global batch.

The store is test_train's (400 NL-RX pairs); every run is compared with another run or with
numbers derived here from the store, never with hard-coded results."""
import os

import pytest
import torch

from conftest import DEEPSPEED, free_port
from test_train import assert_same_curve, metrics, run, store  # noqa: F401 - store is a fixture

E, EPOCHS, LR = 64, 2, 1e-3
BUDGET = ["--train.epochs", str(EPOCHS), "--data.micro_batch_examples", str(E),
          "--data.seq_len", "128", "--data.micro_batch_rows", "4", "--k", "2",
          "--jepa.read_at", "last", "--optim.lr", str(LR), "--optim.schedule", "linear",
          "--optim.warmup_steps", "0", "--optim.min_lr_ratio", "0", "--train.log_every", "1",
          "--train.final_eval", "false"]
SIGREG = ["--lambda", "2", "--jepa.sigreg", "0.1", "--jepa.sigreg_head", "16",
          "--jepa.sigreg_slices", "32"]


def held_out_file(store):
    return os.path.join(os.path.dirname(store), "test.jsonl")


def expected_plan(store):
    """(optimizer steps, examples per epoch) of the budget, from a loader built here."""
    from data_tools.store import open_store
    from megajepa.loader import PackedLoader, budget_steps

    st = open_store(store)
    ld = PackedLoader(st, seq_len=128, micro_batch_rows=4, micro_batch_examples=E, k=2,
                      pred_ids=st.manifest["pred_ids"], pad_id=0, seed=0, read_at="last")
    stats = ld.epoch_stats
    assert stats["dropped_too_long"] == stats["too_short"] == 0
    return budget_steps(ld, steps=1000, epochs=EPOCHS), stats["examples"] - stats["tail_examples"]


@pytest.fixture(scope="module")
def sigreg_run(store, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("budget") / "sigreg")
    run(["--data.train", store, "--data.eval", held_out_file(store), "--run-dir", d,
         "--train.eval_every", "6", "--train.save_every", "6"] + BUDGET + SIGREG)
    return d


def train_rows(run_dir):
    return [m for m in metrics(run_dir) if "loss" in m]


def test_epoch_budget_trains_the_derived_steps_and_logs_cumulative_examples(store, sigreg_run):
    total, per_epoch = expected_plan(store)
    assert total == EPOCHS * (400 // E)                     # 6 micro-batches of 64 per epoch
    m = train_rows(sigreg_run)
    assert [x["step"] for x in m] == list(range(1, total + 1))
    assert [x["examples"] for x in m] == [E * s for s in range(1, total + 1)]
    assert m[-1]["examples"] == EPOCHS * per_epoch          # every epoch minus its reported tail
    assert all(b["tokens"] > a["tokens"] for a, b in zip(m, m[1:]))
    assert all(x["sigreg"] > 0 for x in m) and "sigreg" in m[0]


def test_linear_schedule_reaches_the_hand_computed_lr(store, sigreg_run):
    """HF Trainer's linear decay, no warm-up: after s of T steps the lr is LR * (T - s) / T."""
    total, _ = expected_plan(store)
    for x in train_rows(sigreg_run):
        assert x["lr"] == pytest.approx(LR * (total - x["step"]) / total, rel=1e-9, abs=1e-15)


def test_lambda_0_and_2_see_the_same_examples(store, sigreg_run, tmp_path):
    d = str(tmp_path / "lm")
    run(["--data.train", store, "--run-dir", d, "--lambda", "0", "--train.export", "false"] + BUDGET)
    lm, jepa = train_rows(d), train_rows(sigreg_run)
    assert [x["examples"] for x in lm] == [x["examples"] for x in jepa]
    assert all(a["tokens"] < b["tokens"] for a, b in zip(lm, jepa))  # JEPA pays in tokens
    assert "sigreg" not in lm[0] and all(x["jepa_loss"] == 0 for x in lm)


def test_resume_under_the_budget_with_sigreg_equals_the_uninterrupted_run(store, sigreg_run, tmp_path):
    d = str(tmp_path / "split")
    args = ["--data.train", store, "--data.eval", held_out_file(store), "--run-dir", d,
            "--train.eval_every", "6", "--train.save_every", "6", "--train.export", "false"] + BUDGET + SIGREG
    run(args + ["--train.stop_at", "5"])
    assert [x["step"] for x in train_rows(d)] == [1, 2, 3, 4, 5]
    run(args + ["--resume", "auto"])

    def curve(rd):
        return [(x["step"], x["loss"], x["lm_loss"], x["jepa_loss"], x["sigreg"], x["examples"])
                for x in train_rows(rd)]
    assert_same_curve(curve(d), curve(sigreg_run))


def test_held_out_eval_logs_collapse_metrics_equal_to_an_oracle(store, sigreg_run):
    """At the last step the logged metrics equal collapse_metrics of the exported model's
    read-outs of the same held-out examples, packed anew by collapse.jepa_readouts (its
    own rows and order: the permutation-invariant metrics must agree)."""
    from data_tools.store import open_store
    from megajepa.collapse import collapse_metrics, jepa_readouts
    from megajepa.eval.run import load_model
    from megajepa.loader import PackedLoader

    total, _ = expected_plan(store)
    held = [x for x in metrics(sigreg_run) if "eval/paired_cos" in x]
    assert [x["step"] for x in held] == [6, 12] == [6, total]
    for x in held:
        assert -1 <= x["eval/shuffled_cos"] <= x["eval/paired_cos"] <= 1
        assert 1 <= x["eval/eff_rank_code"] <= 64 and 1 <= x["eval/eff_rank_pred"] <= 64
    ev = open_store(os.path.join(sigreg_run, "eval_store"))
    ld = PackedLoader(ev, seq_len=128, micro_batch_rows=4, k=2, pred_ids=ev.manifest["pred_ids"],
                      pad_id=0, seed=0, read_at="last")
    n = min(4, ld.steps_per_epoch)
    examples = [ev.example(i) for s in range(n) for row in ld.rows_of(0, s) for i in row]
    model, _ = load_model(os.path.join(sigreg_run, "export"), device="cpu", dtype="float32")
    pred, code = jepa_readouts(model, examples, k=2, pred_ids=ev.manifest["pred_ids"], pad_id=0,
                               seq_len=128, read_at="last")
    want = collapse_metrics(pred, code)
    got = held[-1]
    assert got["eval/pairs"] == want["n"] == len(examples)
    for key in ("paired_cos", "code_code_cos", "pred_pred_cos", "eff_rank_code", "eff_rank_pred"):
        assert got[f"eval/{key}"] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(os.path.join(sigreg_run, "tb"))
    ea.Reload()
    assert {"examples", "tokens", "sigreg", "eval/paired_cos", "eval/shuffled_cos",
            "eval/eff_rank_code", "eval/eff_rank_pred"} <= set(ea.Tags()["scalars"])


def test_sigreg_head_is_trained_and_left_out_of_the_export(sigreg_run):
    from megajepa.checkpoint import find_latest

    root = os.path.join(sigreg_run, "checkpoints")
    state = torch.load(os.path.join(root, find_latest(root), "mp_rank_00_model_states.pt"),
                       map_location="cpu", weights_only=False)["module"]
    assert {"sigreg_head.net.weight", "sigreg_head.net.bias"} <= set(state)
    from safetensors.torch import load_file
    exported = load_file(os.path.join(sigreg_run, "export", "model.safetensors"))
    assert not any("sigreg" in k for k in exported)


@pytest.mark.slow
def test_two_ranks_with_sigreg_equal_one_rank_with_the_same_global_batch(store, tmp_path):
    """2 ranks x 32 examples = 1 rank x 64: the same loss, LM, JEPA and SIGReg values (the
    SIGReg sums are all-reduced, the losses normalized by global counts)."""
    def curve(rd):
        return [(x["step"], x["loss"], x["lm_loss"], x["jepa_loss"], x["sigreg"], x["examples"])
                for x in train_rows(rd)]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    args = ["--data.train", store, "--train.stop_at", "4", "--train.export", "false"] + BUDGET + SIGREG
    run(args + ["--run-dir", one])
    two_args = args + ["--run-dir", two]
    two_args[two_args.index("--data.micro_batch_examples") + 1] = str(E // 2)
    run(two_args, launcher=DEEPSPEED + ["--num_gpus", "2", "--master_port", str(free_port())])
    assert len(curve(one)) == 4
    assert_same_curve(curve(two), curve(one), tol=2e-5)


def test_ds_config_batch_unit_follows_the_examples_budget(tmp_path):
    """Under data.micro_batch_examples DeepSpeed's micro-batch is that many examples (the
    paper config: 16 per GPU x 8 GPUs = 128 per step); a file that says otherwise is an error
    naming the setting."""
    import json

    from megajepa.config import Config
    from megajepa.ds_config import resolve

    cfg = Config()
    cfg.data.micro_batch_examples, cfg.train.ds_config = 16, "ds_configs/zero1.json"
    ds = resolve(cfg, 8, bf16=False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (16, 128)
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 1}}))
    cfg.train.ds_config = str(bad)
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=8.*data.micro_batch_examples=16"):
        resolve(cfg, 1, bf16=False)
