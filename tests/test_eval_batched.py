"""Batched evaluation (left-padded greedy batches) gives the rows of one-at-a-time evaluation."""
import torch

from test_eval_generate import argmax_loop, tiny_model, tiny_tokenizer


def test_predict_batched_equals_one_at_a_time_and_the_argmax_oracle():
    from data_tools.templates import prompt_ids
    from megajepa.eval.run import predict

    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=3)
    users = ["a", "lines with dog", "x" * 37, "3 numbers", "lines ending in 'z' or a vowel", "q"]
    recs = [{"user": u, "assistant": "(.*)"} for u in users]
    # an eos the model emits for some prompts, so early stopping inside a batch is exercised
    first = [argmax_loop(model, prompt_ids(tok, u), eos=-1, max_new=9) for u in users]
    eos = first[1][4]
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    batched = predict(model, tok, recs, "nlrx", max_new_tokens=9)          # default batch
    single = predict(model, tok, recs, "nlrx", max_new_tokens=9, batch_size=1)
    assert batched == single
    oracle = [f[:f.index(eos)] if eos in f else f for f in first]   # cut at the first eos
    assert [r["prediction"] for r in batched] == [
        tok.decode(ids, skip_special_tokens=True).strip() for ids in oracle]
    assert any(len(ids) < 9 for ids in oracle)
    assert torch.is_grad_enabled()  # generation's no_grad does not leak
