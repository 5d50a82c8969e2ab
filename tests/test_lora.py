"""LoRA (``--model.lora_rank``, peft): only the adapters and the added tokens' embedding rows
train; the loss head reads the adapted rows as the model's own forward does; the export
merges the adapters into plain weights. Oracles: the model before LoRA (step 0), the
unmerged peft forward (the merge), the model's own logits (the loss head), the checkpoint
the run started from (what stayed frozen), an uninterrupted run (resume)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import tiny_hf
from megajepa import Example, forward, pack
from megajepa.config import ModelConfig, load
from megajepa.model import apply_lora, build_model, lora_token_ids

from conftest import PAD, PRED_IDS, VOCAB, random_examples

pytest.importorskip("peft")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANK = 4


def _perturb(lm, seed=0):
    """Random adapters and token rows (at init LoRA is the identity: B = 0, rows = originals)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def _hand_lm(model, exs):
    """Summed cross-entropy of each lm example run alone, from the model's own logits."""
    total = 0.0
    for e in exs:
        seq = list(e.views[0])
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()
        total += F.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="sum").item()
    return total


@pytest.mark.parametrize("tie", [True, False])
def test_lora_trains_adapters_and_token_rows_and_merges_to_the_same_logits(tie):
    model = build_model(preset="tiny", vocab_size=VOCAB, seed=0, tie_word_embeddings=tie)
    batch = pack(random_examples(12, seed=3), 40, k=2, pred_ids=PRED_IDS, pad_id=PAD, min_rows=0)
    ids = torch.tensor([[5, PRED_IDS[0], 17, PRED_IDS[1], 3, 99]])
    with torch.no_grad():
        before_logits, before = model(ids).logits, forward(model, batch)
    peft_model = apply_lora(model, ModelConfig(lora_rank=RANK), PRED_IDS)
    lm = peft_model.base_model.model
    assert lm is model
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n
                             for n in trainable)
    assert any("embed_tokens" in n and "trainable_tokens_delta" in n for n in trainable)
    head_rows = [n for n in trainable if "lm_head" in n]  # untied: the head's added rows train too
    assert head_rows == ([] if tie else ["lm_head.token_adapter.trainable_tokens_delta.default"])
    with torch.no_grad():  # step 0: LoRA changes nothing yet (the same loss as full fine-tuning)
        torch.testing.assert_close(lm(ids).logits, before_logits, atol=1e-6, rtol=0)
        at_init = forward(lm, batch)
    torch.testing.assert_close(at_init.loss, before.loss, atol=1e-6, rtol=0)

    out = forward(lm, batch)  # gradients reach the adapters and the predictor rows only
    out.loss.backward()
    grads = {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}
    assert set(grads) == trainable
    delta = lm.get_input_embeddings().token_adapter.trainable_tokens_delta["default"]
    assert delta.grad[:2].abs().sum() > 0  # <pred_1>, <pred_2>: the JEPA read-outs need them
    if not tie:  # their logit rows: every labelled position's softmax reaches them
        head_delta = lm.get_output_embeddings().token_adapter.trainable_tokens_delta["default"]
        assert head_delta.grad.abs().sum() > 0
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # A's is 0 while B = 0

    _perturb(lm)
    lm_exs = [Example("lm", [[7, PRED_IDS[0], 9, PRED_IDS[1], 4, PRED_IDS[0], 11]]),
              Example("lm", [[PRED_IDS[1], 2, 30, 5]])]
    lm_batch = pack(lm_exs, 32, k=0, pred_ids=PRED_IDS, pad_id=PAD, min_rows=0)
    with torch.no_grad():  # the loss head reads the adapted rows, as the model's forward does
        ours = forward(lm, lm_batch, kernels="reference", lm_denominator=1.0).lm_loss.item()
        assert abs(ours - _hand_lm(lm, lm_exs)) < 1e-4 * max(1.0, abs(ours))
        unmerged = lm(ids).logits
        assert (unmerged - before_logits).abs().max() > 1e-2
    merged = peft_model.merge_and_unload()
    assert not any("lora" in n or "token_adapter" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_lora_token_ids_are_megajepa_tokens_and_added_rows(tmp_path):
    from data_tools.tokenizer import load_tokenizer, pred_ids

    tiny_hf.save_tiny_chat_model(str(tmp_path / "hf"), ["lines with a dog", "x y z"])
    plain = len(tiny_hf.chat_tokenizer(["lines with a dog", "x y z"]))
    tok, added = load_tokenizer(str(tmp_path / "hf"), k=2)
    ids = lora_token_ids(tok, plain)
    assert ids == list(range(plain, len(tok))) and len(ids) == len(added) == 3  # <sep>, 2 preds
    assert set(pred_ids(tok)) < set(ids)


@pytest.mark.parametrize("args, message", [
    (["--model.lora_rank", "-1"], "model.lora_rank=-1 must be >= 0"),
    (["--model.lora_rank", "4", "--model.lora_dropout", "1"], "model.lora_dropout=1.0 must be in [0, 1)"),
    (["--model.lora_rank", "4", "--model.lora_alpha", "-2"], "model.lora_alpha=-2.0 must be >= 0"),
    (["--model.lora_rank", "4", "--model.lora_targets", " , "], "model.lora_targets is empty"),
])
def test_bad_lora_settings_are_one_line(args, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load(args)


def test_unknown_lora_target_is_one_line():
    model = build_model(preset="tiny", vocab_size=VOCAB, seed=0)
    with pytest.raises(ValueError, match=r"model.lora_targets='qkv_proj': ") as e:
        apply_lora(model, ModelConfig(lora_rank=2, lora_targets="qkv_proj"), PRED_IDS)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------- pretrain.py end to end

TRAIN = ["--data.seq_len", "128", "--data.micro_batch_rows", "4", "--optim.warmup_steps", "1",
         "--train.log_every", "1", "--k", "2", "--lr", "1e-2", "--train.final_eval", "false",
         "--train.save_every", "2", "--train.precision", "fp32",
         "--jepa.kernels", "reference"]  # PyTorch loss paths: faster here than the Triton interpreter
LORA = ["--model.lora_rank", str(RANK), "--model.lora_alpha", "8"]

ZERO0 = ["--ds-config", "ds_configs/zero0.json"]

LORA_CHECK = """
import json, sys, torch, deepspeed
from transformers import AutoModelForCausalLM, AutoTokenizer
from megajepa.config import load
from megajepa.launch import run as train  # the loop, then the export
cfg = load(sys.argv[1:])
result = train(cfg)                      # in process: the trained (unmerged) peft model
lm = result["module"].lm
assert "lora" in type(lm.model.layers[0].self_attn.q_proj).__module__
hf = AutoModelForCausalLM.from_pretrained(result["export"])   # plain transformers, merged
tok = AutoTokenizer.from_pretrained(result["export"])
ids = torch.tensor([tok.encode("lines with the string dog") + tok.convert_tokens_to_ids(["<pred_1>", "<pred_2>"])])
with torch.no_grad(), deepspeed.zero.GatheredParameters(list(lm.parameters())):  # ZeRO-3: whole
    torch.testing.assert_close(hf(ids).logits, lm(ids).logits, atol=1e-5, rtol=1e-5)
    out = hf.generate(ids, max_new_tokens=4, do_sample=False)
assert out.shape[1] > ids.shape[1]
print("TRAINABLE", json.dumps(sorted(n for n, p in lm.named_parameters() if p.requires_grad)))
print("LORA_EXPORT_MATCHES")
"""


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """A tiny pretrained-looking chat model (tied embeddings) and a store in its tokenizer."""
    from data_tools import nlrx
    from data_tools.preprocess import preprocess

    d = tmp_path_factory.mktemp("lora")
    rows = [nlrx.chat_record(r["description"], r["regex"])
            for r in nlrx.generate_pairs(200, seed=1, split="train")]
    with open(d / "train.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    tiny_hf.save_tiny_chat_model(str(d / "hf"), [m["content"] for r in rows for m in r["messages"]])
    preprocess([str(d / "train.jsonl")], str(d / "store"), tokenizer=str(d / "hf"), template="chat",
               progress=False)
    return {"hf": str(d / "hf"), "store": str(d / "store"), "dir": d}


def pretrain(args, script=None, timeout=600):
    cmd = [sys.executable] + (["-c", script] if script else [os.path.join(ROOT, "pretrain.py")])
    p = subprocess.run(cmd + args, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [(m["step"], m["loss"], m["lm_loss"], m["jepa_loss"])
                for m in map(json.loads, fh) if "loss" in m]


@pytest.fixture(scope="module")
def lora_run(chat):
    """4 LoRA steps from the tiny checkpoint, exported, checked in process."""
    d = str(chat["dir"] / "lora")
    p = pretrain(["--init-from", chat["hf"], "--data.train", chat["store"], "--data.template", "chat",
                  "--steps", "4", "--run-dir", d] + TRAIN + LORA + ZERO0, script=LORA_CHECK)
    assert "LORA_EXPORT_MATCHES" in p.stdout, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("TRAINABLE "))
    return {"dir": d, "trainable": json.loads(line.split(" ", 1)[1])}


def test_lora_run_exports_merged_weights_and_only_adapters_and_new_rows_change(chat, lora_run):
    """The export (merged, plain transformers) = the trained peft model (in LORA_CHECK); against
    the checkpoint it started from: every weight LoRA does not target is unchanged, each targeted
    one moved by a matrix of rank <= lora_rank, and of the embedding only the added rows moved."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert all(".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n
               for n in lora_run["trainable"])
    init = AutoModelForCausalLM.from_pretrained(chat["hf"]).state_dict()
    out = load_file(os.path.join(lora_run["dir"], "export", "model.safetensors"))
    base_rows = init["model.embed_tokens.weight"].shape[0]
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    moved = 0
    for name, w0 in init.items():
        if name == "lm_head.weight":  # tied: the embedding's
            continue
        w = out[name]
        if name == "model.embed_tokens.weight":
            assert torch.equal(w[:base_rows], w0) and w.shape[0] > base_rows
            assert not torch.allclose(w[base_rows:], w[base_rows:].mean(0).expand_as(w[base_rows:]))
        elif any(t in name for t in targets):
            delta = (w - w0).double()
            assert 0 < torch.linalg.matrix_rank(delta, atol=1e-6).item() <= RANK, name
            moved += 1
        else:
            assert torch.equal(w, w0), name
    assert moved == 7 * 2
    curve = losses(lora_run["dir"])
    assert curve[-1][1] < curve[0][1]


@pytest.mark.slow
def test_lora_step0_loss_equals_full_finetuning(chat, lora_run, tmp_path):
    d = str(tmp_path / "full")
    pretrain(["--init-from", chat["hf"], "--data.train", chat["store"], "--data.template", "chat",
              "--steps", "1", "--run-dir", d, "--train.export", "false"] + TRAIN + ZERO0)
    full, lora = losses(d), losses(lora_run["dir"])
    assert abs(full[0][1] - lora[0][1]) <= 1e-5 * abs(full[0][1])


@pytest.mark.slow
def test_lora_resume_matches_uninterrupted(chat, lora_run, tmp_path):
    """4 steps = 2 + resume + 2 (adapters, token rows and their optimizer state restored)."""
    d = str(tmp_path / "split")
    args = ["--init-from", chat["hf"], "--data.train", chat["store"], "--data.template", "chat",
            "--steps", "4", "--run-dir", d, "--train.export", "false"] + TRAIN + LORA + ZERO0
    pretrain(args + ["--train.stop_at", "2"])
    pretrain(args + ["--resume", "auto"])
    assert_same_curve(losses(d), losses(lora_run["dir"]))


def assert_same_curve(ours, ref, tol=1e-5):
    assert [s for s, *_ in ours] == [s for s, *_ in ref] == [1, 2, 3, 4]
    for (s, *x), (_, *y) in zip(ours, ref):
        for u, v in zip(x, y):
            assert abs(u - v) <= tol * max(1.0, abs(u)), (s, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("stage, ranks", [("zero1", 1), ("zero3", 2)])
def test_lora_under_zero_stages(chat, lora_run, tmp_path, stage, ranks):
    """ZeRO-1 (optimizer partitions: the export consolidates the frozen weights apart) and
    ZeRO-3 on two ranks (adapters made whole and partitioned by the engine; the token rows
    gathered where peft reads them) train the same curve as ZeRO-0 on one rank, with the same
    global batch; the merged export = the trained model, gathered."""
    from conftest import DEEPSPEED, free_port

    d = str(tmp_path / stage)
    rows = ["--data.micro_batch_rows", str(4 // ranks)]
    args = ["--init-from", chat["hf"], "--data.train", chat["store"], "--data.template", "chat",
            "--steps", "4", "--run-dir", d] + TRAIN + LORA + rows + ["--ds-config", f"ds_configs/{stage}.json"]
    if ranks == 1:
        p = pretrain(args, script=LORA_CHECK)
        assert "LORA_EXPORT_MATCHES" in p.stdout
    else:  # the launcher runs pretrain.py; the export is checked against its logits below
        cmd = DEEPSPEED + ["--num_gpus", str(ranks), "--master_port", str(free_port()),
                           os.path.join(ROOT, "pretrain.py")] + args
        p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        from transformers import AutoModelForCausalLM
        ref = AutoModelForCausalLM.from_pretrained(os.path.join(lora_run["dir"], "export"))
        hf = AutoModelForCausalLM.from_pretrained(os.path.join(d, "export"))
        ids = torch.arange(3, 40).unsqueeze(0)
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, ref(ids).logits, atol=2e-3, rtol=2e-3)
    assert_same_curve(losses(d), losses(lora_run["dir"]), tol=5e-5)
