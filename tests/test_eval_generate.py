"""Batched greedy generation and the eval CLI on a tiny random Llama + char tokenizer."""
import json
import string

import pytest
import torch

from megajepa.eval.generate import generate_ids

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<sep>"]
CHARS = string.ascii_letters + string.digits + " .*()[]|&~{},\\-'"


def tiny_tokenizer():
    """Char-level fast tokenizer with pad/unk/bos/eos/<sep>, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=["<sep>"])


def tiny_model(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=2, eos_token_id=3,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def save_tiny(path, seed=0):
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


@torch.no_grad()
def argmax_loop(model, prompt, eos, max_new):
    """Oracle: one sequence, no padding, full forward each step."""
    ids, out = list(prompt), []
    for _ in range(max_new):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


def test_batched_equals_one_by_one_equals_argmax_loop():
    model = tiny_model(60, seed=1)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 60, (n,), generator=g).tolist() for n in (3, 9, 1, 6, 12, 4, 7)]
    # choose an eos the model actually emits so stopping is exercised
    free = argmax_loop(model, prompts[0], eos=-1, max_new=6)
    eos = free[2]
    batched = generate_ids(model, prompts, eos_id=eos, pad_id=0, max_new_tokens=6, batch_size=4)
    single = generate_ids(model, prompts, eos_id=eos, pad_id=0, max_new_tokens=6, batch_size=1)
    oracle = [argmax_loop(model, p, eos, 6) for p in prompts]
    assert batched == single == oracle
    assert batched[0] == free[:2]
    assert all(len(x) <= 6 and eos not in x for x in batched)


def _write(path, rows):
    with open(path, "w") as f:
        for user, assistant in rows:
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "Convert natural language to regular expression."},
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant}]}) + "\n")


def test_eval_cli_end_to_end(tmp_path, capsys):
    pytest.importorskip("data_tools.templates")
    from megajepa.eval.__main__ import main
    from megajepa.eval.run import evaluate, load_model, predict

    model_dir = tmp_path / "model"
    save_tiny(model_dir)
    users = ["lines with dog", "lines with a vowel", "lines with 3 numbers", "a truck"]
    data = tmp_path / "d.jsonl"
    _write(data, [(u, ".*dog.*") for u in users])
    model, tok = load_model(model_dir, device="cpu")
    first = predict(model, tok, [{"user": u, "assistant": "x"} for u in users], "nlrx",
                    max_new_tokens=5, batch_size=3)
    # references: two equal to what the model says, one semantically equal regex, one other
    refs = [first[0]["prediction"], first[1]["prediction"] + "", ".*dog.*", "[0-9]"]
    _write(data, list(zip(users, refs)))

    out = tmp_path / "out"
    metrics = main(["--model", str(model_dir), "--data", str(data), "--task", "nlrx",
                    "--out", str(out), "--max-new-tokens", "5", "--batch-size", "2"])
    rows = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert [r["reference"] for r in rows] == refs
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in first]
    assert rows[0]["exact"] and rows[0]["startswith"] and rows[1]["exact"]
    assert metrics["exact"] == sum(r["exact"] for r in rows) / 4 >= 0.5
    assert json.loads((out / "metrics.json").read_text())["n"] == 4
    assert "eval nlrx n=4 exact=" in capsys.readouterr().out
    recs = [{"user": u, "assistant": r} for u, r in zip(users, refs)]
    assert evaluate(model, tok, recs, "nlrx", max_new_tokens=5)["exact"] == metrics["exact"]


def test_eval_model_dir_resolution(tmp_path):
    pytest.importorskip("data_tools.templates")
    from megajepa.eval.__main__ import main

    from megajepa.eval.run import load_model

    save_tiny(tmp_path / "run" / "export")   # a run dir resolves to its export/ folder
    model, tok = load_model(tmp_path / "run", device="cpu")
    assert tok.eos_token == "</s>" and not model.training
    data = tmp_path / "d.jsonl"
    _write(data, [("x", "y")])
    from data_tools.errors import DataError
    with pytest.raises(DataError, match="not a Hugging Face model directory.*megajepa.export"):
        main(["--model", str(tmp_path), "--data", str(data), "--task", "nlrx",
              "--out", str(tmp_path / "o")])


def test_bad_data_names_file_and_line(tmp_path):
    from data_tools.errors import DataError
    from megajepa.eval.run import read_records

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, '
                   '{"role": "assistant", "content": "b"}]}\n{"messages": [{"role": "user"')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_records(bad)
    bad.write_text('{"messages": [{"role": "user", "content": "a"}]}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: no assistant"):
        read_records(bad)


def test_read_records_keeps_an_unterminated_last_line(tmp_path):
    from megajepa.eval.run import read_records

    rows = [(f"lines with {w}", f".*{w}.*") for w in ("dog", "cat", "last")]
    _write(tmp_path / "d.jsonl", rows)
    text = (tmp_path / "d.jsonl").read_text()
    assert text.endswith("\n")
    (tmp_path / "d.jsonl").write_text(text.rstrip("\n"))  # as many editors save it
    recs = read_records(tmp_path / "d.jsonl")
    assert [(r["user"], r["assistant"]) for r in recs] == rows
    assert len(read_records(tmp_path / "d.jsonl", limit=2)) == 2
