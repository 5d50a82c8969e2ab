"""The export's chat template renders exactly training's prompt token ids, so plain
``transformers`` (``apply_chat_template`` + ``generate``) queries an export as trained."""
import copy

import pytest
import torch

from data_tools import nlrx
from data_tools.templates import pair_views, prompt_ids


def _records(n, split="test"):
    return [nlrx.chat_record(r["description"], r["regex"])
            for r in nlrx.generate_pairs(n, seed=1, split=split, paraphrase=0.5)]


def _parts(rec):
    m = {x["role"]: x["content"] for x in rec["messages"]}
    return m["system"], m["user"], m["assistant"]


def _chat_ids(tok, messages, generation):
    out = tok.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random model saved as a stage-0 checkpoint of a run with a SentencePiece
    tokenizer (the embedded dataset's kind), exported with megajepa.export."""
    import yaml

    from data_tools.tokenizer import train_sentencepiece
    from megajepa import checkpoint
    from megajepa.config import Config
    from megajepa.export import export
    from megajepa.model import llama_config
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("export")
    rows = nlrx.generate_pairs(300, seed=0, split="train", paraphrase=0.5)
    tok = train_sentencepiece([r["description"] for r in rows] + [r["regex"] for r in rows],
                              str(root / "tok"), vocab_size=300, k=4)
    cfg = Config()
    cfg.model.preset, cfg.data.tokenizer = "tiny", str(root / "tok")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(tok), attn_implementation="sdpa"))
    ckpts = root / "run" / "checkpoints"
    tag = ckpts / checkpoint.tag_for(1)
    tag.mkdir(parents=True)
    torch.save({"module": {f"lm.{k}": v for k, v in model.state_dict().items()}},
               tag / "mp_rank_00_model_states.pt")
    (tag / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (tag / checkpoint.COMPLETE).write_text("{}")
    (ckpts / checkpoint.LATEST).write_text(tag.name)
    out = export(str(root / "run"), str(root / "hf"), dtype="fp32")
    return out, str(root / "tok")


def test_chat_template_gives_training_token_ids(exported):
    from transformers import AutoTokenizer

    from data_tools.tokenizer import load_tokenizer

    out, tok_dir = exported
    tok = AutoTokenizer.from_pretrained(out)       # plain transformers, no megajepa code
    train_tok, _ = load_tokenizer(tok_dir)         # what the store was tokenized with
    assert tok.chat_template
    for rec in _records(60):
        system, user, assistant = _parts(rec)
        text, code = pair_views(train_tok, user, assistant, system=system)
        # the system prompt is dropped by the plain layout, in the template as in training
        assert _chat_ids(tok, rec["messages"][:2], True) == text, user
        assert _chat_ids(tok, rec["messages"][1:2], True) == text
        assert _chat_ids(tok, rec["messages"], False) == text + code, assistant
        # megajepa.eval on the export builds the same prompt as training did
        assert prompt_ids(tok, user, system=system) == text


def test_plain_transformers_generation_equals_megajepa_eval(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megajepa.eval.run import predict

    out, _ = exported
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    recs = _records(4)
    rows = predict(model, tok, recs, "nlrx", max_new_tokens=6, batch_size=4)
    for rec, row in zip(recs, rows):
        inputs = tok.apply_chat_template(rec["messages"][:2], add_generation_prompt=True,
                                         return_dict=True, return_tensors="pt")
        gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        text = tok.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert text.strip() == row["prediction"]


@pytest.mark.parametrize("system_in_plain", [False, True])
def test_template_on_a_char_level_tokenizer(system_in_plain):
    """A tokenizer without SentencePiece's word-start marker: used as is."""
    from test_eval_generate import tiny_tokenizer

    from megajepa.export import plain_chat_template

    tok = tiny_tokenizer()
    before = tok.backend_tokenizer.to_str()
    assert plain_chat_template(tok, system_in_plain=system_in_plain)
    assert tok.backend_tokenizer.to_str() == before
    system, user, assistant = "Convert it.", "lines with dog", ".*dog.*"
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user},
            {"role": "assistant", "content": assistant}]
    text, code = pair_views(tok, user, assistant, system=system,
                            system_in_plain=system_in_plain)
    assert system_in_plain == (len(text) > len(user) + 2)
    assert _chat_ids(tok, msgs[:2], True) == text
    assert _chat_ids(tok, msgs, False) == text + code


def test_sentencepiece_template_with_system_in_plain(tmp_path):
    from data_tools.tokenizer import train_sentencepiece
    from megajepa.export import plain_chat_template

    rows = nlrx.generate_pairs(200, seed=0, split="train")
    train_tok = train_sentencepiece([r["description"] for r in rows] + [r["regex"] for r in rows]
                                    + [nlrx.SYSTEM_PROMPT], str(tmp_path), vocab_size=300, k=2)
    tok = copy.deepcopy(train_tok)
    assert plain_chat_template(tok, system_in_plain=True)
    for rec in _records(20):
        system, user, assistant = _parts(rec)
        text, code = pair_views(train_tok, user, assistant, system=system, system_in_plain=True)
        assert _chat_ids(tok, rec["messages"][:2], True) == text
        assert _chat_ids(tok, rec["messages"], False) == text + code


def test_no_template_when_none_reproduces_training(exported, monkeypatch):
    """If no candidate matches (here: a template that forgets <sep>), nothing is written and
    the tokenizer is left as it was."""
    from data_tools.tokenizer import load_tokenizer
    from megajepa import export as ex

    _, tok_dir = exported
    tok, _ = load_tokenizer(tok_dir)
    before = tok.backend_tokenizer.to_str()
    render = ex._render
    monkeypatch.setattr(ex, "_render", lambda bos, sep, eos, sys_: render(bos, "", eos, sys_))
    assert ex.plain_chat_template(tok) is None
    assert tok.chat_template is None and tok.backend_tokenizer.to_str() == before
