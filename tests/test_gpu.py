"""GPU-only checks (run on the lent GPU machine; skipped without CUDA): the compiled
FlexAttention path against SDPA, forward and backward, and bf16 single pass vs three pass."""
import pytest
import torch

from megajepa import forward, pack
from megajepa.layout import PAD_DOC

from conftest import PAD, PRED_IDS, random_examples, tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("k", [0, 3])
def test_flex_equals_sdpa_forward_and_backward(k):
    b = pack(random_examples(24, seed=7, max_len=40), 256, k=k, pred_ids=PRED_IDS, pad_id=PAD,
             min_rows=3)
    outs = {}
    for attn in ("sdpa", "flex_attention"):
        m = tiny_model(attn).cuda()
        out = forward(m, b, return_hidden=True)
        out.loss.backward()
        outs[attn] = (out, _grads(m))
    (s, gs), (f, gf) = outs["sdpa"], outs["flex_attention"]
    real = (b.doc_ids != PAD_DOC).cuda()
    torch.testing.assert_close(f.hidden[real], s.hidden[real], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(f.loss, s.loss, atol=2e-5, rtol=2e-5)
    for n in gs:
        torch.testing.assert_close(gf[n], gs[n], atol=5e-5, rtol=1e-3)


def test_bf16_single_pass_matches_three_pass():
    b = pack(random_examples(16, seed=8, max_len=30), 256, k=2, pred_ids=PRED_IDS, pad_id=PAD)
    m = tiny_model("flex_attention").cuda().to(torch.bfloat16)
    with torch.no_grad():
        one = forward(m, b)
        three = forward(m, b, mode="three_pass")
    assert torch.isfinite(one.loss)
    torch.testing.assert_close(one.lm_loss, three.lm_loss, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(one.jepa_loss, three.jepa_loss, atol=3e-2, rtol=5e-2)


def _step(model, b):
    out = forward(model, b, return_hidden=True)
    out.loss.backward()
    return out, _grads(model)


@pytest.mark.parametrize("mode", ["layers", "model"])
def test_compiled_flex_equals_eager_flex_forward_and_backward(mode):
    """The GPU default (model.compile auto = layers): FlexAttention inside compiled layers,
    the BlockMask an input; a second micro-batch of the same shape does not recompile."""
    from types import SimpleNamespace

    from megajepa.model import optimize

    eager, comp = tiny_model("flex_attention").cuda(), tiny_model("flex_attention").cuda()
    optimize(comp, SimpleNamespace(compile=mode, liger="off", checkpointing=False), "cuda")
    for seed, strict in ((7, False), (9, True)):   # the 2nd batch reuses the graph
        b = pack(random_examples(24, seed=seed, max_len=40), 256, k=3, pred_ids=PRED_IDS,
                 pad_id=PAD, min_rows=8)
        assert b.input_ids.shape == (8, 256)
        (e, ge) = _step(eager, b)
        with torch._dynamo.config.patch(error_on_recompile=strict):
            (c, gc) = _step(comp, b)
        real = (b.doc_ids != PAD_DOC).cuda()
        torch.testing.assert_close(c.hidden[real], e.hidden[real], atol=2e-5, rtol=2e-5)
        for n in ge:
            torch.testing.assert_close(gc[n], ge[n], atol=5e-5, rtol=1e-3)
        eager.zero_grad(set_to_none=True)
        comp.zero_grad(set_to_none=True)


def test_liger_ops_equal_eager(monkeypatch):
    """model.liger=on: liger-kernel's RMSNorm, RoPE and SwiGLU give the eager loss and grads."""
    pytest.importorskip("liger_kernel")
    from types import SimpleNamespace

    from transformers.models.llama import modeling_llama

    from megajepa.model import optimize

    for name in ("LlamaRMSNorm", "LlamaMLP", "apply_rotary_pos_emb"):  # undone after the test
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))

    b = pack(random_examples(24, seed=7, max_len=40), 256, k=3, pred_ids=PRED_IDS, pad_id=PAD)
    eager, lig = tiny_model("flex_attention").cuda(), tiny_model("flex_attention").cuda()
    (e, ge) = _step(eager, b)  # before the patch: liger swaps Llama's module classes globally
    assert optimize(lig, SimpleNamespace(compile="off", liger="on", checkpointing=False),
                    "cuda")["liger"]
    assert lig.model.norm._get_name() == "LigerRMSNorm"
    l, gl = _step(lig, b)
    torch.testing.assert_close(l.loss, e.loss, atol=1e-4, rtol=1e-4)
    for n in ge:
        torch.testing.assert_close(gl[n], ge[n], atol=1e-4, rtol=1e-3)


def test_random_init_is_built_on_the_gpu():
    from megajepa.model import build_model

    m = build_model(preset="tiny", vocab_size=100, seed=0)
    assert next(m.parameters()).device.type == "cuda"
