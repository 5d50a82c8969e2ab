"""Model construction: presets, seeded init, --init-from a local HF folder with predictor
tokens added and embeddings resized."""
import pytest
import torch

from megajepa.model import PRESETS, build_model, llama_config, num_parameters, resize_for_tokenizer

# Published parameter counts of the Llama shapes (with a 128,256-token vocabulary).
PUBLISHED = {"llama-3.2-1b": 1.236e9, "llama-3.2-3b": 3.213e9, "llama-3.1-8b": 8.030e9}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_llama_shapes_match_published_sizes(preset):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(preset, 128256))
    assert abs(num_parameters(model) - PUBLISHED[preset]) / PUBLISHED[preset] < 0.01


def test_every_preset_builds_a_config():
    for name in PRESETS:
        cfg = llama_config(name, 1000)
        assert cfg.hidden_size % cfg.num_attention_heads == 0 and cfg.vocab_size == 1000
    with pytest.raises(ValueError, match="unknown model preset"):
        llama_config("gpt9", 1000)


def test_seeded_init_is_reproducible():
    a, b, c = (build_model(preset="tiny", vocab_size=50, seed=s) for s in (1, 1, 2))
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not torch.equal(pa["model.embed_tokens.weight"], pc["model.embed_tokens.weight"])


def test_init_from_hf_folder_adds_pred_tokens_and_resizes(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from data_tools.tokenizer import load_tokenizer, pred_ids

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "a", "b", "c", "d"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    src = build_model(preset="tiny", vocab_size=len(vocab), seed=0)
    src.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")

    loaded, added = load_tokenizer(str(tmp_path / "hf"), k=3)
    assert "<pred_3>" in added and len(pred_ids(loaded)) == 3
    model = build_model(init_from=str(tmp_path / "hf"))
    before = model.get_input_embeddings().weight.detach().clone()
    resize_for_tokenizer(model, loaded)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] >= len(loaded) > before.shape[0]
    assert torch.equal(emb[: before.shape[0]], before)          # old rows untouched
    assert torch.isfinite(emb).all()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model(init_from=str(tmp_path / "nothing"))


# ---------------------------------------------------------------- speed options (optimize)

from types import SimpleNamespace  # noqa: E402

from megajepa import forward, masking, pack  # noqa: E402
from megajepa.model import optimize, resolve_compile, resolve_liger  # noqa: E402

from conftest import PAD, PRED_IDS, random_examples, tiny_model  # noqa: E402


def _opts(compile="off", liger="off", checkpointing=False):
    return SimpleNamespace(compile=compile, liger=liger, checkpointing=checkpointing)


def _batch(seed, rows=8):
    b = pack(random_examples(24, seed=seed, max_len=40), 256, k=3, pred_ids=PRED_IDS,
             pad_id=PAD, min_rows=rows)
    assert b.input_ids.shape == (rows, 256)   # one shape for every seed: no recompilation
    return b


def _loss_and_grads(model, batch):
    out = forward(model, batch, lbd=1.0, kernels="reference")
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.loss.detach(), grads


def _assert_same_step(model, reference, batch):
    loss, grads = _loss_and_grads(model, batch)
    want, want_grads = _loss_and_grads(reference, batch)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    assert grads.keys() == want_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], want_grads[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("mode", ["layers", pytest.param("model", marks=pytest.mark.slow)])
def test_compiled_model_gives_eager_loss_and_grads(mode):
    """torch.compile (sdpa backend) through objective.forward: the eager loss and gradients,
    and a second micro-batch of the same shape (a new mask) reuses the graph."""
    model, eager = tiny_model("sdpa"), tiny_model("sdpa")
    applied = optimize(model, _opts(compile=mode), "cpu")
    assert applied == {"compile": mode, "liger": False, "checkpointing": False}
    compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert compiled == (list(model.model.layers) if mode == "layers" else [model.model])
    _assert_same_step(model, eager, _batch(7))
    with torch._dynamo.config.patch(error_on_recompile=True):
        _assert_same_step(model, eager, _batch(8))   # other documents, same [rows, seq_len]


@pytest.mark.slow
def test_compiled_flex_layers_give_sdpa_loss(monkeypatch):
    """The GPU default path on CPU: FlexAttention inside compiled layers with the BlockMask as
    an input (forward only: FlexAttention has no CPU backward; about 25 s to compile)."""
    model, eager = tiny_model("flex_attention"), tiny_model("sdpa")
    optimize(model, _opts(compile="layers"), "cpu")
    calls = _count_calls(monkeypatch, "block_mask")
    with torch.no_grad():
        for seed, strict in ((7, False), (8, True)):   # the 2nd batch reuses the graph
            b = _batch(seed)
            with torch._dynamo.config.patch(error_on_recompile=strict):
                got = forward(model, b, kernels="reference", return_hidden=True)
            want = forward(eager, b, kernels="reference", return_hidden=True)
            real = b.doc_ids != -1
            torch.testing.assert_close(got.hidden[real], want.hidden[real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    assert calls == [(8, 256)] * 2   # one BlockMask per forward, whatever the layer count


def test_activation_checkpointing_gives_the_same_grads():
    model, eager = tiny_model("sdpa"), tiny_model("sdpa")
    assert optimize(model, _opts(checkpointing=True), "cpu")["checkpointing"]
    assert model.model.gradient_checkpointing
    _assert_same_step(model, eager, _batch(7))


def _count_calls(monkeypatch, name):
    calls, real = [], getattr(masking, name)

    def counting(doc_ids, roles, *a, **kw):
        calls.append(tuple(doc_ids.shape))
        return real(doc_ids, roles, *a, **kw)

    monkeypatch.setattr(masking, name, counting)
    return calls


def test_mask_is_built_once_per_forward(monkeypatch):
    """One mask per micro-batch, shared by every layer (flex: tests below, marked slow)."""
    calls = _count_calls(monkeypatch, "dense_mask")
    model = tiny_model("sdpa")
    assert model.config.num_hidden_layers > 1
    out = forward(model, _batch(7), kernels="reference")
    out.loss.backward()
    assert calls == [(8, 256)]


def test_speed_option_resolution(monkeypatch):
    assert resolve_compile("auto", "cpu") == "off"
    assert resolve_compile("auto", "cuda", zero_stage=1) == "layers"
    assert resolve_compile("auto", "cuda", zero_stage=3) == "off"
    assert resolve_compile("model", "cpu") == "model"
    with pytest.raises(ValueError, match="model.compile=layers is not supported with ZeRO-3"):
        resolve_compile("layers", "cuda", zero_stage=3)
    with pytest.raises(ValueError, match="model.compile must be one of"):
        resolve_compile("max", "cuda")
    assert resolve_liger("auto", "cpu", "off") is False
    assert resolve_liger("off", "cuda", "off") is False
    with pytest.raises(ValueError, match="model.liger=on needs CUDA"):
        resolve_liger("on", "cpu", "off")
    monkeypatch.setattr("megajepa.model.liger_installed", lambda: False)
    assert resolve_liger("auto", "cuda", "off") is False
    with pytest.raises(ValueError, match="liger-kernel is not installed"):
        resolve_liger("on", "cuda", "off")


def test_liger_is_applied_to_the_instance_without_its_loss_head(monkeypatch):
    """Where liger runs (CUDA, installed) optimize patches this model's RMSNorm, RoPE and
    SwiGLU and leaves the LM loss to megajepa (the kernels themselves: tests/test_gpu.py)."""
    import sys
    import types

    seen = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_llama = lambda **kw: seen.append(kw)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    monkeypatch.setattr("megajepa.model.liger_installed", lambda: True)
    model = tiny_model("sdpa")
    assert resolve_liger("auto", "cuda", "layers") is False   # compiled: Inductor fuses them
    applied = optimize(model, _opts(liger="auto"), "cuda", zero_stage=3)  # compile: off
    assert applied == {"compile": "off", "liger": True, "checkpointing": False}
    assert seen == [dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                         fused_linear_cross_entropy=False, model=model)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_analytic_parameter_count_equals_the_model(preset):
    from transformers import LlamaForCausalLM

    from megajepa.model import estimate_parameters, llama_parameters

    config = llama_config(preset, 1000)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert llama_parameters(config) == num_parameters(model)
    assert estimate_parameters(preset) == llama_parameters(llama_config(preset, 128256))


def test_speed_flags_parse_from_the_command_line():
    from megajepa import config

    cfg = config.load(["--model.compile", "off", "--model.liger", "on", "--model.checkpointing", "true"])
    assert (cfg.model.compile, cfg.model.liger, cfg.model.checkpointing) == ("off", "on", True)
    assert config.load([]).model.compile == "auto"
    with pytest.raises(SystemExit):
        config.load(["--model.compile", "max-autotune"])
