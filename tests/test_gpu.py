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
