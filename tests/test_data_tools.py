"""data_tools: generator, tokenizer, preprocessing into a store, and bad input via the CLI."""
import filecmp
import json
import os
import subprocess
import sys

import pytest

from data_tools import nlrx, templates
from data_tools.errors import DataError
from data_tools.preprocess import preprocess
from data_tools.store import open_store
from data_tools.tokenizer import load_tokenizer, pred_ids, special_ids, train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    pairs = [nlrx.chat_record(r["description"], r["regex"]) for r in nlrx.generate_pairs(300, seed=1)]
    groups = nlrx.generate_groups(200, seed=1, with_regex=True)
    texts = [t for g in groups for t in g["texts"]] + [p["messages"][1]["content"] for p in pairs] + \
            [p["messages"][2]["content"] for p in pairs]
    tok = train_sentencepiece(texts, str(d / "tok"), vocab_size=400, model_type="bpe", k=4)
    return dict(dir=d, tok=str(d / "tok"), tokenizer=tok, pairs=pairs, groups=groups,
                pairs_path=write_jsonl(d / "pairs.jsonl", pairs), groups_path=write_jsonl(d / "groups.jsonl", groups))


# ---------------------------------------------------------------- generator

def test_generator_is_deterministic_and_splits_are_disjoint():
    assert nlrx.generate_pairs(50, seed=3) == nlrx.generate_pairs(50, seed=3)
    assert nlrx.generate_pairs(50, seed=3) != nlrx.generate_pairs(50, seed=4)
    assert nlrx.generate_groups(20, seed=3) == nlrx.generate_groups(20, seed=3)
    train = {r["regex"] for r in nlrx.generate_pairs(2000, seed=0)} | \
            {g["regex"] for g in nlrx.generate_groups(500, seed=9)}
    test = {r["regex"] for r in nlrx.generate_pairs(500, seed=0, split="test")}
    assert train and test and not train & test
    for g in nlrx.generate_groups(100, seed=0, views=4):
        assert 2 <= len(g["texts"]) <= 4 and len(set(g["texts"])) == len(g["texts"])


def test_generated_regexes_follow_the_descriptions():
    """Oracle: Python's regex engine on the operators it shares with NL-RX (no & or ~)."""
    import re

    cases = {"lines with a number followed by a vowel": ("12a", "a12"),
             "lines starting with the string 'dog'": ("dogs", "a dog")}
    tree = {"lines with a number followed by a vowel": nlrx.Node("follow", (nlrx.Node("atom", atom="number"),
                                                                            nlrx.Node("atom", atom="vowel"))),
            "lines starting with the string 'dog'": nlrx.Node("starts", (nlrx.Node("atom", atom="'dog'"),))}
    for desc, (yes, no) in cases.items():
        assert nlrx.describe_line(tree[desc]) == desc
        rx = re.compile(tree[desc].regex())
        assert rx.fullmatch(yes) and not rx.fullmatch(no)


def test_generate_cli_is_byte_identical(tmp_path):
    for out in ("a", "b"):
        r = _cli("generate", "--out", str(tmp_path / out), "--train", "50", "--test", "10", "--seed", "2")
        assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "a")) == ["groups_test.jsonl", "groups_train.jsonl", "pairs_test.jsonl",
                                                  "pairs_train.jsonl"]
    for name in os.listdir(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    rec = json.loads(open(tmp_path / "a" / "pairs_train.jsonl").readline())
    assert rec["messages"][0]["content"] == "Convert natural language to regular expression."


# ---------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_tokenizer_loads_with_autotokenizer_and_has_specials(data, tmp_path, model_type):
    from transformers import AutoTokenizer

    out = tmp_path / model_type
    r = _cli("train_tokenizer", data["pairs_path"], data["groups_path"], "--out", str(out), "--vocab-size", "300",
             "--model", model_type, "--k-pred", "3")
    assert r.returncode == 0, r.stderr
    tok = AutoTokenizer.from_pretrained(str(out))
    assert special_ids(tok) == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "sep": 4}
    assert pred_ids(tok) == [5, 6, 7]
    assert {"<sep>", "<pred_1>", "<pred_3>"} <= set(tok.all_special_tokens)
    ids = tok.encode("lines with a vowel <sep>", add_special_tokens=False)
    assert ids[-1] == 4 and tok.decode(ids, skip_special_tokens=True) == "lines with a vowel"


def test_hf_tokenizer_gets_missing_tokens_added_and_reported(data, tmp_path):
    tok, _ = load_tokenizer(data["tok"])
    assert pred_ids(tok) == [5, 6, 7, 8]
    tok2, added = load_tokenizer(data["tok"], k=6)
    assert added == ["<pred_5>", "<pred_6>"] and pred_ids(tok2)[:4] == [5, 6, 7, 8]
    with pytest.raises(DataError, match="no such directory: .*nope"):
        load_tokenizer(str(tmp_path / "nope"))


# ---------------------------------------------------------------- store

def test_pair_store_matches_templates(data, tmp_path):
    tok = data["tokenizer"]
    s = preprocess([data["pairs_path"]], str(tmp_path / "st"), tokenizer=data["tok"], progress=False)
    assert s["records"] == s["examples"] == 300
    st = open_store(str(tmp_path / "st"))
    st.verify()
    assert st.kind == "pair" and len(st) == 300 and st.pred_ids == [5, 6, 7, 8]
    assert st.manifest["counts"]["tokens"] == int(st.view_lengths.sum()) == len(st.tokens)
    for i, rec in enumerate(data["pairs"]):
        _, user, asst = (m["content"] for m in rec["messages"])
        text, code = st.views(i)
        assert (text, code) == templates.pair_views(tok, user, asst)
        assert text[0] == 2 and text[-1] == 4 and code[-1] == 3
        assert tok.decode(text, skip_special_tokens=True) == user
        assert tok.decode(code, skip_special_tokens=True) == asst


def test_group_and_text_stores(data, tmp_path):
    tok = data["tokenizer"]
    preprocess([data["groups_path"]], str(tmp_path / "g"), tokenizer=data["tok"], progress=False, workers=2,
               chunk_size=32)
    st = open_store(str(tmp_path / "g"))
    assert st.kind == "group" and len(st) == 200
    for i, g in enumerate(data["groups"]):
        assert [tok.decode(v, skip_special_tokens=True) for v in st.views(i)] == g["texts"]
    txt = tmp_path / "plain.txt"
    txt.write_text("first document\n\nsecond one\n")
    s = preprocess([str(txt)], str(tmp_path / "t"), tokenizer=data["tok"], progress=False)
    st = open_store(str(tmp_path / "t"))
    assert st.kind == "lm" and len(st) == 2 and s["records"] == 2
    assert st.views(1) == [templates.lm_view(tok, "second one")]


def test_cestwc_paraphrase_layout(data, tmp_path):
    """cestwc/paraphrase rows: {paraphrase_set_id, text, id}, one sentence each, grouped by set id."""
    rows = [{"paraphrase_set_id": 7, "text": "how do I learn python", "id": 0},
            {"paraphrase_set_id": 7, "text": "what is the best way to learn python", "id": 1},
            {"paraphrase_set_id": 3, "text": "a man rides a horse", "id": 2},
            {"paraphrase_set_id": 7, "text": "how can I study python", "id": 3},
            {"paraphrase_set_id": 3, "text": "a person is riding a horse", "id": 4}]
    path = write_jsonl(tmp_path / "cestwc.jsonl", rows)
    preprocess([path], str(tmp_path / "c"), tokenizer=data["tok"], progress=False)
    st = open_store(str(tmp_path / "c"))
    dec = lambda v: data["tokenizer"].decode(v, skip_special_tokens=True)  # noqa: E731
    assert st.kind == "group" and len(st) == 2
    assert [dec(v) for v in st.views(0)] == [r["text"] for r in rows if r["paraphrase_set_id"] == 7]
    assert [dec(v) for v in st.views(1)] == [r["text"] for r in rows if r["paraphrase_set_id"] == 3]
    # the same rows through datasets.load_dataset on a local directory (the --hf path)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    write_jsonl(hf_dir / "train.jsonl", rows)
    preprocess([str(hf_dir)], str(tmp_path / "c_hf"), tokenizer=data["tok"], hf=True, hf_split="train",
               progress=False)
    st_hf = open_store(str(tmp_path / "c_hf"))
    assert [st_hf.views(i) for i in range(2)] == [st.views(i) for i in range(2)]


def test_preprocess_is_idempotent_and_refuses_to_overwrite(data, tmp_path):
    args = [data["pairs_path"], "--tokenizer", data["tok"]]
    assert _cli("preprocess", *args, "--out", str(tmp_path / "a")).returncode == 0
    assert _cli("preprocess", *args, "--out", str(tmp_path / "b"), "--workers", "2").returncode == 0
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    _assert_same_tree(tmp_path / "a", tmp_path / "b")
    r = _cli("preprocess", *args, "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert _cli("preprocess", *args, "--out", str(tmp_path / "a"), "--overwrite").returncode == 0
    _assert_same_tree(tmp_path / "a", tmp_path / "b")
    assert not cmp.left_only and not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def _assert_same_tree(a, b):
    for d, _, files in os.walk(a):
        for name in files:
            other = os.path.join(b, os.path.relpath(d, a), name)
            assert filecmp.cmp(os.path.join(d, name), other, shallow=False), name
    assert sum(len(f) for _, _, f in os.walk(a)) == sum(len(f) for _, _, f in os.walk(b))


# ---------------------------------------------------------------- bad input via the CLI

CHAT = {"messages": [{"role": "user", "content": "lines with a vowel"}, {"role": "assistant", "content": "[AEIOUaeiou]"}]}
BAD = {
    "malformed_json": ([CHAT, '{"messages": [}'], "2: malformed JSON"),
    "missing_field": ([CHAT, CHAT, {"msgs": []}], "3: missing field 'messages'"),
    "mistyped_field": ([CHAT, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}],
                       "2: wrong type: user content must be a string"),
    "empty_view": ([CHAT, {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}],
                   "2: empty view"),
    "one_view_group": ([["a", "b"], {"texts": ["only one"]}], "2: group with 1 view"),
    "cestwc_one_view": ([{"paraphrase_set_id": 1, "text": "a", "id": 0}, {"paraphrase_set_id": 2, "text": "b", "id": 1},
                         {"paraphrase_set_id": 1, "text": "c", "id": 2}], "2: group with 1 view"),
    "unknown_format": ([{"question": "q", "answer": "a"}], "1: unknown format"),
    "token_id_outside_vocab": ([[[5, 6], [7, 8]], [[5, 99999], [6]]], "2: token id 99999 outside the vocabulary"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line(data, tmp_path, case, capfd):
    from data_tools import preprocess as cmd
    from data_tools.errors import run_cli

    records, message = BAD[case]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    # in-process: the CLI's exit code and stderr without a Python start-up per case
    # (tests/test_data_tools_errors.py runs the real command line once)
    code = run_cli(cmd.main, [path, "--tokenizer", data["tok"], "--out", str(tmp_path / "out")], skip_hint=True)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {path}:{message}"), err
    assert os.listdir(tmp_path) == ["in.jsonl"]  # no output, no temp dir


def test_bad_tokenizer_and_format_flags(data, tmp_path):
    r = _cli("preprocess", data["pairs_path"], "--tokenizer", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and f"error: no such directory: {tmp_path / 'missing'}" in r.stderr
    r = _cli("preprocess", data["pairs_path"], "--tokenizer", data["tok"], "--format", "xml", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown format 'xml'" in r.stderr
    assert os.listdir(tmp_path) == []


def test_skip_bad_counts_why(data, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [CHAT, "{oops", CHAT, {"msgs": 1}])
    r = _cli("preprocess", path, "--tokenizer", data["tok"], "--out", str(tmp_path / "o"), "--on-bad", "skip")
    assert r.returncode == 0, r.stderr
    assert "examples written 2" in r.stdout and "dropped 2" in r.stdout and "malformed JSON" in r.stdout
    assert open_store(str(tmp_path / "o")).manifest["counts"]["dropped"] == {"malformed JSON": 1,
                                                                             "missing field 'messages'": 1}


def _cli(tool, *args):
    return subprocess.run([sys.executable, "-m", f"data_tools.{tool}", *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def test_chat_template_pairs(data, tmp_path):
    """--template chat: the text view is the tokenizer's chat template with the generation prompt."""
    tok, _ = load_tokenizer(data["tok"])
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>{% endif %}")
    tok.save_pretrained(str(tmp_path / "chat_tok"))
    preprocess([data["pairs_path"]], str(tmp_path / "st"), tokenizer=str(tmp_path / "chat_tok"), template="chat",
               progress=False)
    st = open_store(str(tmp_path / "st"))
    system, user, asst = (m["content"] for m in data["pairs"][0]["messages"])
    text, code = st.views(0)
    assert text == templates.prompt_ids(tok, user, system=system, template="chat")
    assert text[0] == text[-1] == tok.bos_token_id and text.count(tok.eos_token_id) == 2  # system, user turns
    assert code == templates.encode(tok, asst) + [tok.eos_token_id]


# --help of every data tool: tests/test_cli_help.py (the flags the docs use are listed).


# ---------------------------------------------------------------- the last line of a file

NO_NEWLINE = {  # format: (lines of the file, what the last record must read as)
    "chat": ([json.dumps(CHAT)] * 2 + [json.dumps({"messages": [
        {"role": "user", "content": "last one"}, {"role": "assistant", "content": "x"}]})],
        lambda r: r.data["user"] == "last one"),
    "group": ([json.dumps(["a b", "c d"]), json.dumps({"texts": ["e", "last one"]})],
              lambda r: r.data == ["e", "last one"]),
    "cestwc": ([json.dumps({"paraphrase_set_id": 1, "text": "a", "id": 0}),
                json.dumps({"paraphrase_set_id": 2, "text": "b", "id": 1}),
                json.dumps({"paraphrase_set_id": 2, "text": "last one", "id": 2}),
                json.dumps({"paraphrase_set_id": 1, "text": "c", "id": 3})],
               lambda r: r.data == ["b", "last one"]),
    "text_jsonl": ([json.dumps({"text": "first"}), json.dumps({"text": "last one"})],
                   lambda r: r.data == "last one"),
    "txt": (["first document", "", "last one"], lambda r: r.data == "last one"),
}


@pytest.mark.parametrize("fmt", sorted(NO_NEWLINE))
@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_last_record_is_kept_with_or_without_a_final_newline(tmp_path, fmt, ending):
    from data_tools.readers import read_records

    lines, check = NO_NEWLINE[fmt]
    path = tmp_path / ("in.txt" if fmt == "txt" else "in.jsonl")
    path.write_bytes((ending or "\n").join(lines).encode() + ending.encode())
    recs = list(read_records(str(path)))
    want = {"cestwc": 2, "txt": 2}.get(fmt, len(lines))
    assert len(recs) == want
    assert any(check(r) for r in recs), [r.data for r in recs]


def test_preprocess_keeps_the_unterminated_last_record(data, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in data["pairs"][:5]))  # no final newline
    s = preprocess([str(path)], str(tmp_path / "st"), tokenizer=data["tok"], progress=False)
    st = open_store(str(tmp_path / "st"))
    assert s["records"] == s["examples"] == len(st) == 5
    _, user, asst = (m["content"] for m in data["pairs"][4]["messages"])
    assert st.views(4) == list(templates.pair_views(data["tokenizer"], user, asst))
