"""Every causal-LM family a user would fine-tune, exact in the packed single pass.

Tiny random configs (2 layers, dim 64) of each family ``transformers`` ships, with sliding
windows shorter than the documents (Mistral, Phi-3, Qwen2/3, the local layers of Gemma-2/3),
soft caps and logit scales that change the loss (Gemma-2, Cohere, Granite), under every
attention backend the family supports. The oracles are the model's own forwards, unpacked:

* every packed hidden state = the model's own forward of its logical sequence run alone
  (its own mask: causal, window, local/global layers);
* the LM loss = cross-entropy of the model's own ``logits`` of each LM sequence run alone;
* the JEPA read-outs = the last hidden state of (source + predictors) and of the target run
  alone, and the single-pass losses = the three-pass oracle's.

Each check is shown able to fail: without the window (or the soft cap, or the scale) the
same comparison misses. docs/training.md's family table lists what this file checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import transformers

from megajepa import forward, masking, objective, pack
from megajepa.layout import PAD_DOC, PRED, TEXT

from conftest import DEEPSPEED, PAD, PRED_IDS, ROOT, free_port, load_script, random_examples
from test_objective import distance64, hand_lm_sequences, hand_reads, in_order_rows

WINDOW = 4  # shorter than most documents (views of 2..9 tokens, plus predictors)
ALL = ("sdpa", "eager", "flex_attention")
tiny_hf = load_script("make_tiny_hf")  # the family configs: one source for tests and users


@dataclass(frozen=True)
class Family:
    name: str                     # a key of make_tiny_hf.FAMILIES
    backends: tuple = ALL
    head_scale: float = 1.0       # scale the LM head so that a soft cap or a logit scale matters

    @property
    def windowed(self) -> bool:   # some layer has a window shorter than the documents
        return self.name in tiny_hf.WINDOWED

    def build(self, attn: str, seed: int = 0):
        cfg = tiny_hf.family_config(self.name, vocab_size=128, window=WINDOW, intermediate=128,
                                    pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
        model = tiny_hf.family_model(cfg, self.name, seed, attn_implementation=attn)
        head = model.get_output_embeddings()
        with torch.no_grad():
            head.weight.mul_(self.head_scale)
            if head.bias is not None:  # initialized to zero: make it matter
                head.bias.normal_(0.0, 1.0)
        return model.eval()


FAMILIES = [
    Family("llama"),
    Family("qwen2"),                      # layer 0 full, layer 1 sliding; q/k/v biases
    Family("qwen3"),
    Family("mistral"),                    # one window for every layer
    Family("gemma2", backends=("eager", "flex_attention"), head_scale=300.0),  # both soft caps
    Family("gemma3"),
    Family("olmo2"),
    Family("phi3"),                       # fused qkv, one window for every layer
    Family("cohere", head_scale=100.0),   # logit_scale 0.0625
    Family("granite", head_scale=100.0),  # logits_scaling 8
    # beyond the list: a window with a logit scale, a biased LM head, OLMo-3's windows
    Family("cohere2", head_scale=100.0),
    Family("phi"),
    Family("olmo3"),
]
FAST = [(f, b) for f in FAMILIES for b in f.backends if b != "flex_attention"]
FLEX = [f for f in FAMILIES if "flex_attention" in f.backends]


def run_alone(model, tokens):
    """The model's own forward of one sequence: no mask given, so its own (causal, windows)."""
    return model.base_model(input_ids=torch.tensor([tokens]), use_cache=False).last_hidden_state[0]


def own_lm(model, exs):
    """(summed cross-entropy of the model's own logits, label count), each sequence alone."""
    total, count = 0.0, 0
    for e in exs:
        for seq, start in hand_lm_sequences(e):
            logits = model(input_ids=torch.tensor([seq])).logits[0].double()
            total += F.cross_entropy(logits[start - 1:-1], torch.tensor(seq[start:]),
                                     reduction="sum").item()
            count += len(seq) - start
    return total, count


def unpacked_hidden(model, b):
    """Hidden states at every non-padding position, each from its logical sequence run alone
    (a PRED token from text+predictors, every other token from its document without PRED)."""
    want = torch.full(b.input_ids.shape + (model.config.hidden_size,), float("nan"))
    for r in range(b.input_ids.shape[0]):
        docs, roles = b.doc_ids[r], b.roles[r]
        for d in torch.unique(docs).tolist():
            if d == PAD_DOC:
                continue
            main = ((docs == d) & (roles != PRED)).nonzero().squeeze(-1)
            want[r, main] = run_alone(model, b.input_ids[r, main].tolist())
            preds = (docs == d) & (roles == PRED)
            if preds.any():
                seq = ((docs == d) & ((roles == PRED) | (roles == TEXT))).nonzero().squeeze(-1)
                h = run_alone(model, b.input_ids[r, seq].tolist())
                is_pred = roles[seq] == PRED
                want[r, seq[is_pred]] = h[is_pred]
    return want


def batch_for(exs, k=2, seq_len=64):
    kw = dict(k=k, reverse=False, jepa_pairs="next")
    return pack(exs, seq_len, pred_ids=PRED_IDS, pad_id=PAD, rows=in_order_rows(exs, seq_len, **kw),
                **kw)


@pytest.mark.parametrize("family,attn", FAST, ids=[f"{f.name}-{b}" for f, b in FAST])
def test_packed_single_pass_equals_the_models_own_unpacked_forward(family, attn):
    model = family.build(attn)
    exs = random_examples(10, seed=6)
    b = batch_for(exs)
    assert b.input_ids.shape[0] > 1
    real = b.doc_ids != PAD_DOC
    with torch.no_grad():
        out = forward(model, b, return_hidden=True, kernels="reference")
        three = forward(model, b, mode="three_pass", kernels="reference")
        want = unpacked_hidden(model, b)
        ce, count = own_lm(model, exs)
        preds, tgts = hand_reads(model, exs, k=2)
    assert torch.isfinite(out.hidden).all() and not torch.isnan(want[real]).any()
    torch.testing.assert_close(out.hidden[real], want[real], atol=1e-5, rtol=1e-5)
    flat = out.hidden.reshape(-1, out.hidden.shape[-1])
    torch.testing.assert_close(flat[b.pred_index], preds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat[b.target_index], tgts, atol=1e-5, rtol=1e-5)
    assert out.num_label_tokens == count
    assert abs(out.lm_loss.item() - ce / count) <= 1e-5 * max(1.0, ce / count)
    assert abs(out.jepa_loss.item() - distance64(preds, tgts, "cosine").mean().item()) < 1e-5
    for name in ("lm_loss", "jepa_loss"):
        torch.testing.assert_close(getattr(out, name), getattr(three, name), atol=2e-5, rtol=2e-5)
    if family.windowed:  # the check can fail: without the model's windows the states differ
        no_window = {None: None}
        orig = masking.layer_windows
        masking.layer_windows = lambda config: no_window
        try:
            with torch.no_grad():
                plain = forward(model, b, return_hidden=True, kernels="reference").hidden
        finally:
            masking.layer_windows = orig
        assert (plain[real] - want[real]).abs().max() > 1e-3


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.name in ("gemma2", "cohere", "granite", "phi")],
                         ids=lambda f: f.name)
def test_logit_transform_is_read_from_the_model_and_matters(family):
    """The loss head reads the soft cap / scale from the config; the model's own head code
    agrees on a probe (check_lm_head), and dropping the transform changes the loss."""
    model = family.build(family.backends[0])
    head = objective.check_lm_head(model)
    assert head.softcap is not None or head.scale != 1.0 or head.bias is not None
    b = batch_for(random_examples(10, seed=3))
    with torch.no_grad():
        h = forward(model, b, return_hidden=True, kernels="reference").hidden
        ours = objective.lm_loss_sum(h, b.labels, head, impl="chunked")
        bare = objective.lm_loss_sum(h, b.labels, objective.LMHead(head.weight), impl="chunked")
    assert abs(ours.item() - bare.item()) > 1e-2 * abs(ours.item())


def test_check_lm_head_refuses_a_transform_it_does_not_read():
    """A model whose forward scales its logits by a setting megajepa does not read is
    refused in one line naming the model."""
    model = FAMILIES[0].build("sdpa")
    objective.check_lm_head(model)
    model.config.logit_scale = 2.0   # we would read it; the Llama forward ignores it
    with pytest.raises(ValueError, match=r"^llama \(logit_scale=2.0\): the model's own logits differ"):
        objective.check_lm_head(model)


def test_layer_windows_are_read_from_the_config():
    """Which layers have which window, from the config; what has no packed mask is refused."""
    t = transformers
    TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    assert masking.layer_windows(t.LlamaConfig(**TINY)) == {None: None}
    assert masking.layer_windows(t.MistralConfig(**TINY, sliding_window=4)) == {None: 4}
    assert masking.layer_windows(t.Qwen2Config(**TINY, sliding_window=4)) == {None: None}  # off
    assert masking.layer_windows(t.Qwen2Config(**TINY, use_sliding_window=True, sliding_window=4,
                                               max_window_layers=1)) == {"full_attention": None,
                                                                          "sliding_attention": 4}
    assert masking.layer_windows(t.Gemma2Config(**TINY, head_dim=16, sliding_window=4)) == \
        {"sliding_attention": 4, "full_attention": None}
    assert masking.window_per_layer(t.MistralConfig(**TINY, sliding_window=4)) == [4, 4]
    assert masking.window_per_layer(t.LlamaConfig(**TINY)) == [None, None]
    assert masking.window_per_layer(t.Qwen2Config(**TINY, use_sliding_window=True, sliding_window=4,
                                                  max_window_layers=1)) == [None, 4]
    assert masking.window_per_layer(t.Gemma2Config(**TINY, head_dim=16, sliding_window=4)) == [4, None]
    for cfg, why in ((t.Gemma3TextConfig(**TINY, head_dim=16, use_bidirectional_attention=True),
                      "use_bidirectional_attention"),
                     (t.Llama4TextConfig(**TINY, attention_chunk_size=8), "attention_chunk_size=8"),
                     (t.Qwen3NextConfig(**TINY), "layer type 'linear_attention'")):
        with pytest.raises(ValueError, match=why):
            masking.layer_windows(cfg)


def test_a_model_without_position_ids_is_refused():
    """Bloom (ALiBi from the row index) cannot restart positions per document: one line."""
    model = transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=128, hidden_size=32,
                                                                   n_layer=1, n_head=4))
    b = batch_for(random_examples(4, seed=1))
    with pytest.raises(ValueError, match="^BloomForCausalLM: its forward takes no position_ids"):
        forward(model, b)


def test_sdpa_is_refused_where_the_family_has_none():
    """Gemma-2 has no SDPA path in transformers (attention soft cap): refused at load."""
    with pytest.raises(ValueError, match="sdpa|scaled_dot_product_attention"):
        next(f for f in FAMILIES if f.name == "gemma2").build("sdpa")


def eager_flex(monkeypatch):
    """transformers' FlexAttention path with torch's eager flex_attention instead of the
    compiled one (the same function, its unfused reference form; seconds instead of a
    compile per family on CPU). The compiled path: the slow test below, and test_objective."""
    from torch.nn.attention.flex_attention import flex_attention

    import transformers.integrations.flex_attention as hf_flex
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))


def check_flex(family, exs):
    model = family.build("flex_attention")
    ref = family.build(next(b for b in family.backends if b != "flex_attention"))
    b = batch_for(exs)
    real = b.doc_ids != PAD_DOC
    with torch.no_grad():  # FlexAttention has no CPU backward
        out = forward(model, b, return_hidden=True, kernels="reference")
        three = forward(model, b, mode="three_pass", kernels="reference")
        want = unpacked_hidden(ref, b)
        ce, count = own_lm(ref, exs)
    torch.testing.assert_close(out.hidden[real], want[real], atol=1e-5, rtol=1e-5)
    assert abs(out.lm_loss.item() - ce / count) <= 1e-5 * max(1.0, ce / count)
    torch.testing.assert_close(out.jepa_loss, three.jepa_loss, atol=2e-5, rtol=2e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("family", FLEX, ids=lambda f: f.name)
def test_flex_attention_equals_the_models_own_unpacked_forward(family, monkeypatch):
    """The BlockMask path (per-layer-type dicts, windows, Gemma-2's attention soft cap as a
    score_mod): the model's own unpacked states and LM loss (its own sdpa/eager forward)."""
    eager_flex(monkeypatch)
    check_flex(family, random_examples(10, seed=6))


@pytest.mark.slow
def test_compiled_flex_attention_with_windows_and_soft_caps():
    """The compiled FlexAttention kernel transformers runs, on the family that combines
    per-layer masks, windows and both soft caps (~25 s on CPU: one compile)."""
    check_flex(next(f for f in FAMILIES if f.name == "gemma2"), random_examples(6, seed=5))


# --- pretrain.py --init-from each family: train, resume, export -----------------------------

ZERO3_FAMILIES = ("gemma2", "qwen2", "phi3")  # tied + soft caps + windows; biases; fused qkv
SINGLE_FAMILIES = tuple(f for f in tiny_hf.FAMILIES if f not in ZERO3_FAMILIES)
RUN_FLAGS = ["--data.template", "chat", "--steps", "3", "--train.log_every", "1",
             "--train.export", "false", "--train.final_eval", "false", "--data.seq_len", "128",
             "--data.micro_batch_rows", "2", "--optim.warmup_steps", "1", "--k", "2", "--lbd", "1.0"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """A tiny checkpoint of every family in make_tiny_hf.FAMILIES, all with one tokenizer
    (data_tools' SentencePiece, no <pred_i>), and one chat store made with it."""
    from transformers import AutoTokenizer

    from data_tools import nlrx
    from data_tools.preprocess import preprocess

    d = tmp_path_factory.mktemp("families")
    data = d / "train.jsonl"
    with open(data, "w") as fh:
        for r in nlrx.generate_pairs(64, seed=1, split="train"):
            fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
    assert tiny_hf.main(["--data", str(data), "--out", str(d / "llama"), "--vocab-size", "200",
                         "--family", "llama"]) == 0
    tok = AutoTokenizer.from_pretrained(d / "llama")
    for f in tiny_hf.FAMILIES:
        if f != "llama":
            tiny_hf.save_family(str(d / f), f, tok)
    preprocess([str(data)], str(d / "store"), tokenizer=str(d / "llama"), template="chat",
               progress=False)
    return d



def run_families(args, launcher=(sys.executable,)):
    p = subprocess.run([*launcher, os.path.join("tests", "family_run.py"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [(m["step"], m["loss"], m["lm_loss"]) for m in map(json.loads, fh) if "loss" in m]


def generates(export_dir, family):
    """Plain transformers opens the export, keeps the family's settings, and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(export_dir)
    tok = AutoTokenizer.from_pretrained(export_dir)
    assert hf.config.model_type == tiny_hf.family_config(family, vocab_size=8).model_type
    assert "<pred_2>" in tok.get_vocab() and hf.config.vocab_size >= len(tok)
    if hf.config.tie_word_embeddings:
        assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    ids = tok.apply_chat_template([{"role": "user", "content": "lines with the word dog"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = hf.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_zero3_two_ranks_train_resume_export(family_dirs, tmp_path):
    """Two ranks under ZeRO-3 (gloo), eager attention: each family trains, stops at step 2,
    resumes to the same curve as an uninterrupted run, and exports its trained weights."""
    out = tmp_path / "runs"
    stdout = run_families(
        [str(out), *(str(family_dirs / f) for f in ZERO3_FAMILIES), "--",
         "--data.train", str(family_dirs / "store"), "--ds-config", "ds_configs/zero3.json",
         "--model.attn", "eager", *RUN_FLAGS],
        launcher=(*DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port())))
    for f in ZERO3_FAMILIES:
        assert f"FAMILY_OK {f}" in stdout
        straight, resumed = losses(out / f / "straight"), losses(out / f / "resumed")
        assert [s for s, *_ in resumed] == [1, 2, 3]
        for a, b in zip(straight, resumed):
            assert a == pytest.approx(b, rel=1e-5), (f, straight, resumed)
        generates(out / f / "resumed" / "export", f)


@pytest.mark.slow
def test_single_process_train_export_every_other_family(family_dirs, tmp_path):
    """One process, the default DeepSpeed config and attention: every other family trains
    and exports its trained weights, which plain transformers generates from."""
    out = tmp_path / "runs"
    stdout = run_families(["--no-resume", str(out), *(str(family_dirs / f) for f in SINGLE_FAMILIES),
                           "--", "--data.train", str(family_dirs / "store"), *RUN_FLAGS])
    for f in SINGLE_FAMILIES:
        assert f"FAMILY_OK {f}" in stdout
        assert len(losses(out / f / "straight")) == 3
        generates(out / f / "straight" / "export", f)


@pytest.mark.parametrize("family,want", [("gemma2", "eager"), ("qwen2", "sdpa")])
def test_attention_auto_on_cpu_picks_what_the_family_has(family, want, tmp_path):
    """``model.attn auto`` on CPU: SDPA, or eager for a family without SDPA (Gemma-2)."""
    from types import SimpleNamespace

    import torch

    from megajepa.train import attention

    tiny_hf.family_config(family, vocab_size=64).save_pretrained(tmp_path)
    cfg = SimpleNamespace(model=SimpleNamespace(attn="auto", init_from=str(tmp_path)))
    assert attention(cfg, torch.device("cpu")) == want
    assert attention(SimpleNamespace(model=SimpleNamespace(attn="auto", init_from=None)),
                     torch.device("cpu")) == "sdpa"
