"""The epoch budget: micro-batches of a fixed number of whole examples (equal examples per
step whatever the loss), cumulative example/token counts that survive a resume, the
optimizer steps of an epoch budget, and the config rules that guard it."""
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_tools.store import StoreWriter, open_store
from megajepa.config import load
from megajepa.layout import PAD_DOC
from megajepa.loader import PackedLoader, budget_steps

PRED_IDS = [90, 91, 92]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pair_store(path, n, seed=0, max_len=14, min_len=1):
    """Random pairs (ids 5..80), each view ending in 3 (eos)."""
    rng = random.Random(seed)
    with StoreWriter(str(path), kind="pair", vocab_size=100) as w:
        for _ in range(n):
            w.add([[rng.randint(5, 80) for _ in range(rng.randint(min_len, max_len))] + [3] for _ in range(2)])
        w.commit(dict(pred_ids=PRED_IDS, special_ids=dict(pad=0, bos=2, eos=3, sep=4, unk=1)))
    return open_store(str(path))


def by_examples(store, **kw):
    args = dict(seq_len=64, micro_batch_rows=1, micro_batch_examples=5, k=3, pred_ids=PRED_IDS,
                pad_id=0, seed=3)
    return PackedLoader(store, **{**args, **kw})


def ids_of(ld, epoch, step, rank=None):
    return sorted(i for row in ld.rows_of(epoch, step, rank) for i in row)


def test_every_micro_batch_holds_exactly_e_whole_examples(tmp_path):
    st = pair_store(tmp_path / "s", 103)
    ld = by_examples(st)
    stats = ld.epoch_stats
    assert ld.steps_per_epoch == 103 // 5 and stats["tail_examples"] == 103 % 5
    assert stats["examples_per_step"] == 5
    shapes = set()
    for step in range(ld.steps_per_epoch):
        b = next(ld)
        assert b.num_pairs == 5 and b.stats["examples"] == 5 and b.stats["dropped"] == 0
        assert b.shape[0] == len(ld.rows_of(0, step)) and b.shape[1] == 64
        shapes.add(b.shape[0])
        # whole examples: every example contributes its two documents to one row
        docs = [set(b.doc_ids[r][b.doc_ids[r] != PAD_DOC].tolist()) for r in range(b.shape[0])]
        assert sum(len(d) for d in docs) == 2 * 5
    assert len(shapes) > 1                                     # rows vary with the examples
    fixed = by_examples(st, fixed_rows=True)
    assert {next(fixed).shape[0] for _ in range(fixed.steps_per_epoch)} == {fixed.epoch_stats["max_rows"]}


def test_next_token_and_jepa_arms_see_the_same_examples_per_step(tmp_path):
    """--lambda 0 (no JEPA segments) and --lambda 2 differ in rows and tokens, not examples."""
    st = pair_store(tmp_path / "s", 80)
    lm, jepa = by_examples(st, jepa_ratio=0.0), by_examples(st, jepa_ratio=1.0)
    assert lm.steps_per_epoch == jepa.steps_per_epoch == 16
    for e in (0, 1):
        for s in range(16):
            assert ids_of(lm, e, s) == ids_of(jepa, e, s)
    a, b = next(lm), next(jepa)
    assert a.stats["real_tokens"] < b.stats["real_tokens"] and a.num_pairs == 0
    lm_rows = sum(len(lm.rows_of(0, s)) for s in range(16))
    assert lm_rows < sum(len(jepa.rows_of(0, s)) for s in range(16))
    # The rows budget, by contrast, gives the JEPA arm fewer examples per step (more steps).
    rows = dict(micro_batch_examples=0, micro_batch_rows=2)
    assert by_examples(st, jepa_ratio=0.0, **rows).steps_per_epoch < by_examples(st, **rows).steps_per_epoch


def test_ranks_partition_the_epoch_and_resume_is_exact(tmp_path):
    st = pair_store(tmp_path / "s", 64)
    ranks = [by_examples(st, world_size=2, rank=r, micro_batch_examples=3) for r in range(2)]
    n = ranks[0].steps_per_epoch
    assert n == 64 // 6 and ranks[0].epoch_stats["tail_examples"] == 64 % 6
    seen = [i for s in range(n) for r in range(2) for i in ids_of(ranks[0], 0, s, r)]
    assert len(seen) == len(set(seen)) == 6 * n
    for rank in range(2):
        ref = by_examples(st, world_size=2, rank=rank, micro_batch_examples=3)
        want = [next(ref) for _ in range(n + 4)]               # crosses into epoch 1
        part = by_examples(st, world_size=2, rank=rank, micro_batch_examples=3)
        for _ in range(n - 2):
            next(part)
        state = part.state_dict()
        again = by_examples(st, world_size=2, rank=rank, micro_batch_examples=3)
        again.load_state_dict(state)
        old = by_examples(st, world_size=2, rank=rank, micro_batch_examples=3)
        old.load_state_dict({k: v for k, v in state.items() if not k.startswith("seen_")})
        assert old.seen == again.seen == part.seen             # recomputed from the plans
        got = [next(again) for _ in range(6)]
        for a, b in zip(want[n - 2:], got):
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.target_index, b.target_index)
        assert again.seen == ref.seen
    with pytest.raises(ValueError, match="micro_batch_examples"):
        by_examples(st, micro_batch_examples=4).load_state_dict(by_examples(st).state_dict())


def test_seen_counts_every_ranks_examples_and_tokens(tmp_path):
    st = pair_store(tmp_path / "s", 50)
    ranks = [by_examples(st, world_size=2, rank=r, micro_batch_examples=2) for r in range(2)]
    examples = tokens = 0
    for step in range(ranks[0].steps_per_epoch + 3):
        batches = [next(ld) for ld in ranks]
        examples += sum(b.stats["examples"] for b in batches)
        tokens += sum(b.stats["real_tokens"] for b in batches)
        assert ranks[0].seen == ranks[1].seen == {"examples": examples, "tokens": tokens}
    assert examples == 4 * (ranks[0].plan(0).steps + 3)
    rows = by_examples(st, micro_batch_examples=0, micro_batch_rows=2)
    b = next(rows)
    assert rows.seen == {"examples": b.stats["examples"], "tokens": b.stats["real_tokens"]}


def test_budget_steps(tmp_path):
    st = pair_store(tmp_path / "s", 103)
    ld = by_examples(st)
    assert budget_steps(ld, steps=7, epochs=0) == 7
    assert budget_steps(ld, steps=7, epochs=3, grad_accum=1) == 3 * 20
    assert budget_steps(ld, steps=7, epochs=3, grad_accum=4) == 60 // 4
    assert budget_steps(ld, steps=7, epochs=1, grad_accum=7) == 20 // 7
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        budget_steps(ld, steps=7, epochs=1, grad_accum=21)


def test_views_without_content_are_left_out_and_counted(tmp_path):
    st = pair_store(tmp_path / "s", 60, max_len=3, min_len=0)  # some views are "</s>" alone
    shortest = np.minimum.reduceat(np.asarray(st.view_lengths), np.asarray(st.example_offsets)[:-1])
    ld = by_examples(st, read_at="last")
    assert ld.epoch_stats["too_short"] == int((shortest < 2).sum()) > 0
    assert by_examples(st, read_at="last", jepa_ratio=0.0).epoch_stats["too_short"] == 0
    for _ in range(ld.steps_per_epoch):
        assert next(ld).num_pairs == 5


@pytest.mark.parametrize("argv,message", [
    (["--train.epochs", "0"], "train.epochs=0"),
    (["--train.epochs", "-2"], "train.epochs=-2"),
    (["--train.epochs", "2", "--steps", "10"], "both given"),
    (["--jepa.sigreg", "-0.5"], "jepa.sigreg=-0.5"),
    (["--jepa.sigreg", "0.5", "--lambda", "0"], "jepa.lbd=0"),
    (["--jepa.sigreg", "0.5", "--jepa-mode", "three_pass"], "single_pass"),
    (["--data.micro_batch_examples", "-1"], "micro_batch_examples"),
])
def test_bad_budget_values_are_one_error(argv, message):
    with pytest.raises(ValueError, match=message) as err:
        load(argv)
    assert "\n" not in str(err.value)


def test_yaml_epochs_with_default_steps_loads(tmp_path):
    """A saved config.yaml (every field, steps at its default) loads again with epochs."""
    cfg = load(["--train.epochs", "3"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load(["--config", str(path)]).train.epochs == 3
    assert load(["--config", str(path), "--train.epochs", "4"]).train.epochs == 4
    with pytest.raises(ValueError, match="both given"):
        load(["--config", str(path), "--steps", "5"])


def test_cli_reports_one_line_and_exit_2():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for argv in (["--train.epochs", "0"], ["--jepa.read_at", "middle"]):
        p = subprocess.run([sys.executable, "pretrain.py", *argv], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert argv[0].lstrip("-") in p.stderr and not p.stdout


@pytest.mark.parametrize("size,gpus", [("paper", 8), ("tiny", 1)])
def test_table1_configs_are_the_paper_recipe(size, gpus):
    """configs/nlrx_table1_*.yaml: the authors' recipe, 128 examples per optimizer step."""
    cfg = load(["--config", os.path.join(ROOT, "configs", f"nlrx_table1_{size}.yaml")])
    d, j, o, t = cfg.data, cfg.jepa, cfg.optim, cfg.train
    assert t.epochs == 4 and d.micro_batch_examples * o.grad_accum * gpus == 128
    assert (o.schedule, o.warmup_steps, o.min_lr_ratio, o.weight_decay) == ("linear", 0, 0.0, 0.0)
    assert (o.beta1, o.beta2, o.eps, o.grad_clip) == (0.9, 0.999, 1e-8, 1.0)
    assert (j.k, j.lbd, j.gamma, j.distance, j.read_at, j.sigreg) == (3, 2.0, 1.0, "cosine", "last", 0.0)
    assert d.lm_on_all and t.eval_task == "nlrx"
    if size == "paper":
        assert (cfg.model.preset, o.lr, d.seq_len, t.precision, t.max_new_tokens) == \
            ("llama-3.2-1b", 8e-5, 512, "bf16", 128)
    assert load(["--config", os.path.join(ROOT, "configs", f"nlrx_table1_{size}.yaml"),
                 "--lambda", "0"]).jepa.lbd == 0
