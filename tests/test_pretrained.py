"""--init-from a real checkpoint: a local folder, a hub name (from a cache built here, offline)
or a GGUF file (a tiny Llama written by tests/tiny_hf.py), and the model's own tokenizer and
chat template on every path that tokenizes. Oracles: the GGUF round trip gives the original
logits (F32) or gguf's own de-quantization (Q8_0); a store's ids are compared with the
model's vocabulary; the export renders training's prompt with the model's chat template."""
import json
import os
import subprocess
import sys

import pytest
import torch

import tiny_hf
from data_tools import nlrx
from data_tools.errors import run_cli
from data_tools.templates import prompt_ids
from data_tools.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--data.seq_len", "128", "--data.micro_batch_rows", "4", "--optim.warmup_steps", "1",
         "--train.log_every", "1", "--k", "1"]


def _records(n, split, seed=1):
    return [nlrx.chat_record(r["description"], r["regex"])
            for r in nlrx.generate_pairs(n, seed=seed, split=split)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    train, test = _records(120, "train"), _records(12, "test")
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        with open(d / name, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [m["content"] for r in train for m in r["messages"]]
    model, tok = tiny_hf.save_tiny_chat_model(str(d / "hf"), texts)
    return {"dir": d, "hf": str(d / "hf"), "model": model, "tok": tok,
            "train": str(d / "train.jsonl"), "test": str(d / "test.jsonl")}


def pretrain(args, env=None, timeout=600):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "pretrain.py"), *args], cwd=ROOT,
                          env=e, capture_output=True, text=True, timeout=timeout)


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------ GGUF

def test_gguf_converts_to_the_same_model_tokenizer_and_chat_template(data, tmp_path):
    gguf = pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megajepa import pretrained

    src = tiny_hf.write_gguf(data["model"], data["tok"], tmp_path / "tiny.gguf")
    out = pretrained.convert_gguf(src, str(tmp_path / "plain"))
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([data["tok"].encode("lines with the word dog, naïve 42%")])
    assert torch.equal(model(ids).logits, data["model"](ids).logits)   # F32: exact
    assert tok.get_vocab() == data["tok"].get_vocab()
    assert tok.chat_template == tiny_hf.SMOLLM2_TEMPLATE
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert pretrained.up_to_date(out, src) and not hasattr(model.config, "quantization_config")

    q8 = gguf.GGMLQuantizationType.Q8_0  # de-quantized as gguf's own reference does
    src8 = tiny_hf.write_gguf(data["model"], data["tok"], tmp_path / "q8.gguf", qtype=q8)
    m8 = AutoModelForCausalLM.from_pretrained(pretrained.convert_gguf(src8, str(tmp_path / "p8")))
    w = data["model"].model.layers[1].mlp.down_proj.weight.detach().numpy()
    ref = gguf.quants.dequantize(gguf.quants.quantize(w, q8), q8)
    assert torch.equal(m8.model.layers[1].mlp.down_proj.weight, torch.from_numpy(ref))
    assert not torch.equal(m8.model.layers[1].mlp.down_proj.weight, torch.from_numpy(w))


def _truncated(path):
    raw = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(raw[: len(raw) // 2])


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("truncated", "not a readable GGUF file (truncated or corrupt"),
    ("junk", "not a readable GGUF file"),
    ("architecture", "GGUF model with architecture rwkv7 is not supported"),
    ("quantization", "cannot de-quantize (Dequantization for Q8_1"),
])
def test_bad_gguf_is_one_line_exit_2_and_nothing_written(case, message, data, tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    from megajepa import pretrained

    path = tmp_path / "m.gguf"
    if case in ("truncated", "architecture", "quantization"):
        tiny_hf.write_gguf(data["model"], data["tok"], path,
                           arch="rwkv7" if case == "architecture" else "llama",
                           raw_override=("blk.0.ffn_up.weight", gguf.GGMLQuantizationType.Q8_1)
                           if case == "quantization" else None)
    if case == "truncated":
        _truncated(path)
    if case == "junk":
        path.write_bytes(b"not a gguf file at all" * 50)
    out = tmp_path / "out"
    assert run_cli(pretrained.main, [str(path), "--out", str(out)]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ([] if case == "missing" else ["m.gguf"])


def test_missing_gguf_extra_is_one_line(data, tmp_path, monkeypatch):
    import importlib.util

    from data_tools.errors import DataError
    from megajepa import pretrained

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(DataError, match=r"needs gguf: pip install -e '\.\[gguf\]'"):
        pretrained.convert_gguf(str(tmp_path / "m.gguf"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_from_package_finds_the_one_gguf_without_importing_it(tmp_path, monkeypatch):
    from data_tools.errors import DataError
    from megajepa import pretrained

    pkg = tmp_path / "fakepkg_with_gguf"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing is not allowed here')\n")
    (pkg / "weights" / "M.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pretrained.package_gguf("fakepkg_with_gguf") == str(pkg / "weights" / "M.Q4_1.gguf")
    with pytest.raises(DataError, match="no such package installed"):
        pretrained.package_gguf("no_such_package_xyz")


# ------------------------------------------------------------------------------ folders, hub

def test_folder_without_weights_is_refused_before_anything_is_written(data, tmp_path, capsys):
    import shutil

    from megajepa.launch import main

    cfg_only = tmp_path / "cfg_only"
    shutil.copytree(data["hf"], cfg_only, ignore=shutil.ignore_patterns("*.safetensors"))
    run = tmp_path / "run"
    assert main(["--init-from", str(cfg_only), "--data.train", data["train"], "--run-dir", str(run)]) == 2
    assert "a model folder without weights" in one_line(capsys.readouterr().err)
    assert not run.exists()


def test_hub_name_resolves_from_the_cache_offline(data, tmp_path):
    """A cache built here, HF_HUB_OFFLINE=1: the snapshot is the folder; a name not in the
    cache is one line."""
    cache = tmp_path / "hub"
    snap = tiny_hf.fake_hub_cache(data["hf"], str(cache), "tinyorg/tiny-chat")
    code = ("from megajepa import pretrained; from data_tools.errors import DataError\n"
            "print(pretrained.resolve('tinyorg/tiny-chat'))\n"
            "print(pretrained.config_of('tinyorg/tiny-chat').hidden_size)\n"
            "try: pretrained.resolve('tinyorg/not-cached')\n"
            "except DataError as e: print(e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert os.path.realpath(lines[0]) == os.path.realpath(snap) and lines[1] == "64"
    assert lines[2] == ("model.init_from tinyorg/not-cached: not a local path, and no complete copy "
                        "in the local Hugging Face cache (HF_HUB_OFFLINE is set)")


# ------------------------------------------------------------------------------ the model's tokenizer

def test_every_tokenization_uses_the_models_tokenizer(data, tmp_path):
    """With --init-from and no data.tokenizer: the embedded data and the held-out set are
    tokenized with the model's tokenizer (nothing trained); the model's ids keep their
    meaning and the chat template is the model's."""
    from megajepa import config as config_mod
    from megajepa import data as data_mod

    cfg = config_mod.load(["--init-from", data["hf"], "--data.embedded_examples", "40",
                           "--data.embedded_eval", "8", "--data.template", "chat",
                           "--data.eval", data["test"]])
    run = data_mod.prepare(cfg, str(tmp_path / "run"), rank=0)
    assert run.model_dir == data["hf"]
    assert not os.path.exists(tmp_path / "run" / "embedded" / "tokenizer")     # none trained
    model_vocab = data["tok"].get_vocab()
    for store in (run.train_store, run.eval_store):
        vocab = load_tokenizer(store.tokenizer_path)[0].get_vocab()
        assert {t: vocab[t] for t in model_vocab} == model_vocab
    rec = run.eval_records[0]
    text = run.eval_store.views(0)[0]
    assert text == prompt_ids(run.tokenizer, rec["user"], system=rec["system"], template="chat")
    assert run.tokenizer.decode(text).startswith("<|im_start|>system\nConvert natural language")


def test_store_with_another_vocabulary_is_refused(data, tmp_path, capsys):
    from data_tools.preprocess import preprocess
    from data_tools.tokenizer import train_sentencepiece
    from megajepa.launch import main

    texts = [json.loads(ln)["messages"][1]["content"] for ln in open(data["train"])]
    train_sentencepiece(texts, str(tmp_path / "spm"), vocab_size=200, k=2)
    preprocess([data["train"]], str(tmp_path / "store"), tokenizer=str(tmp_path / "spm"), progress=False)
    run = tmp_path / "run"
    assert main(["--init-from", data["hf"], "--data.train", str(tmp_path / "store"),
                 "--run-dir", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "was tokenized with a different vocabulary than the model's tokenizer" in line
    assert f"preprocess with --tokenizer {data['hf']}" in line and not run.exists()


@pytest.mark.slow
def test_chat_finetune_end_to_end_from_a_hub_name_and_a_raw_jsonl(data, tmp_path):
    """Hub name (offline cache) + raw JSONL + --data.template chat: the store uses the model's
    tokenizer and chat template (<pred_1>, <sep> added, embeddings resized), training runs,
    the export keeps the template and <|im_end|> as end of turn, megajepa.eval --template chat
    and plain transformers both run on it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "hub"
    tiny_hf.fake_hub_cache(data["hf"], str(cache), "tinyorg/tiny-chat")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    run = str(tmp_path / "run")
    p = pretrain(["--init-from", "tinyorg/tiny-chat", "--data.train", data["train"],
                  "--data.template", "chat", "--data.eval", data["test"], "--steps", "3",
                  "--train.eval_limit", "4", "--train.max_new_tokens", "8", "--run-dir", run,
                  *TRAIN], env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not os.path.exists(os.path.join(run, "data", "tokenizer"))         # nothing trained
    store_tok = AutoTokenizer.from_pretrained(os.path.join(run, "data", "store", "tokenizer"))
    vocab = store_tok.get_vocab()
    assert {t: vocab[t] for t in data["tok"].get_vocab()} == data["tok"].get_vocab()
    assert "<pred_1>" in vocab and "<sep>" in vocab

    export = os.path.join(run, "export")
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.chat_template == tiny_hf.SMOLLM2_TEMPLATE and tok.eos_token == "<|im_end|>"
    config = AutoConfig.from_pretrained(export)
    assert config.vocab_size >= len(tok) > len(data["tok"])                  # resized
    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    rec = json.loads(open(data["test"]).readline())["messages"]
    ids = tok.apply_chat_template(rec[:2], add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    assert ids == prompt_ids(tok, rec[1]["content"], system=rec[0]["content"], template="chat")
    out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
    assert out.shape[1] > len(ids)
    assert os.path.isfile(os.path.join(run, "final_eval.json"))

    e = subprocess.run([sys.executable, "-m", "megajepa.eval", "--model", export, "--data", data["test"],
                        "--task", "nlrx", "--template", "chat", "--limit", "3", "--max-new-tokens", "6",
                        "--out", str(tmp_path / "eval")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert e.returncode == 0, e.stderr[-2000:]


@pytest.mark.slow
def test_gguf_init_from_is_converted_beside_the_run_and_exported(data, tmp_path):
    pytest.importorskip("gguf")
    src = tiny_hf.write_gguf(data["model"], data["tok"], tmp_path / "tiny.gguf")
    run = str(tmp_path / "run")
    args = ["--init-from", src, "--data.train", data["train"], "--data.template", "chat",
            "--steps", "2", "--run-dir", run, "--train.final_eval", "false", *TRAIN]
    p = pretrain(args)
    assert p.returncode == 0, p.stderr[-3000:]
    from megajepa import pretrained
    assert pretrained.up_to_date(os.path.join(run, "init_model"), src)
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(os.path.join(run, "export")).chat_template == tiny_hf.SMOLLM2_TEMPLATE
