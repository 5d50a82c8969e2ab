"""Bad input in every data_tools command: one line naming file, line (and column), exit 2,
nothing written; ``--on-bad skip`` skips and counts; tokenizer names resolve without waiting
on the network; ``--help`` is plain text with help for every flag (issue 12, items 2, 3, 8)."""
import json
import os
import subprocess
import sys

import pytest

from data_tools import nlrx
from data_tools.errors import DataError, run_cli
from data_tools.store import open_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = {"messages": [{"role": "user", "content": "lines with a vowel"}, {"role": "assistant", "content": "[AEIOUaeiou]"}]}


def chat_lines(n):
    return [json.dumps(nlrx.chat_record(r["description"], r["regex"])).encode()
            for r in nlrx.generate_pairs(n, seed=5)]


def bad_utf8_file(path, n=6, bad_line=4, column=20):
    """A chat JSONL whose line ``bad_line`` holds byte 0xff at ``column`` (1-based)."""
    lines = chat_lines(n)
    raw = lines[bad_line - 1]
    lines[bad_line - 1] = raw[:column - 1] + b"\xff" + raw[column - 1:]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def run(main, argv, capfd):
    """A data_tools CLI in-process through run_cli: (exit code, stdout, stderr lines)."""
    skip = main.__module__.endswith(("preprocess", "train_tokenizer"))
    code = run_cli(main, argv, skip_hint=skip)
    out, err = capfd.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def _main(tool):
    import importlib

    return importlib.import_module(f"data_tools.{tool}").main


# ---------------------------------------------------------------- invalid UTF-8, JSON columns

def test_invalid_utf8_in_preprocess_is_one_line_with_file_line_and_column(tok, tmp_path):
    path = bad_utf8_file(tmp_path / "in.jsonl", bad_line=4, column=20)
    r = subprocess.run([sys.executable, "-m", "data_tools.preprocess", path, "--tokenizer", tok, "--out",
                        str(tmp_path / "st")], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {path}:4: invalid UTF-8: byte 0xff at column 20"), lines
    assert "--on-bad skip" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_on_bad_skip_skips_invalid_utf8_and_counts_it(tok, tmp_path):
    from data_tools.preprocess import preprocess

    path = bad_utf8_file(tmp_path / "in.jsonl", n=6, bad_line=2)
    s = preprocess([path], str(tmp_path / "st"), tokenizer=tok, on_bad="skip", progress=False)
    assert s["records"] == s["examples"] == 5 and s["dropped"] == {"invalid UTF-8": 1}
    assert open_store(str(tmp_path / "st")).manifest["counts"]["dropped"] == {"invalid UTF-8": 1}


@pytest.mark.parametrize("prefix", ["", "é€" * 30])  # the column counts characters, not bytes
def test_malformed_json_names_the_real_column(tmp_path, prefix, capfd, tok):
    good = json.dumps({"messages": [{"role": "user", "content": prefix + "x" * 80},
                                    {"role": "assistant", "content": "y"}]}, ensure_ascii=False)
    col = good.index('"y"') + 1  # break the line at the assistant's content
    broken = good[:col - 1] + "}" + good[col - 1:]
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + broken + "\n", encoding="utf-8")
    code, _, err = run(_main("preprocess"), [str(path), "--tokenizer", tok, "--out", str(tmp_path / "st")], capfd)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {path}:2: malformed JSON: Expecting value at column {col};"), err
    assert col > 100


def test_lone_surrogate_escape_is_bad_text(tmp_path, capfd, tok):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT).replace("a vowel", "a \\ud800 vowel") + "\n")
    code, _, err = run(_main("preprocess"), [str(path), "--tokenizer", tok, "--out", str(tmp_path / "st")], capfd)
    assert code == 2 and err[0].startswith(f"error: {path}:2: invalid text: user content holds an unpaired "
                                           "surrogate \\ud800")
    assert os.listdir(tmp_path) == ["in.jsonl"]


@pytest.mark.parametrize("case", ["directory", "missing", "empty"])
def test_unusable_input_files(tmp_path, capfd, tok, case):
    path = tmp_path / "in.jsonl"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_text("\n\n")
    code, _, err = run(_main("preprocess"), [str(path), "--tokenizer", tok, "--out", str(tmp_path / "st")], capfd)
    want = {"directory": "is a directory", "missing": "no such file", "empty": "no examples"}[case]
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {path}: {want}"), err
    assert "st" not in os.listdir(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--chunk-size", "0"], "--chunk-size must be >= 1, got 0"),
    (["--max-doc-tokens", "1"], "--max-doc-tokens must be >= 2, got 1"),
    (["--k-pred", "-1"], "--k-pred must be >= 0, got -1"),
])
def test_impossible_preprocess_flags(tmp_path, capfd, tok, flags, message):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(CHAT) + "\n")
    code, _, err = run(_main("preprocess"), [str(path), "--tokenizer", tok, "--out", str(tmp_path / "st"), *flags],
                       capfd)
    assert code == 2 and err == [f"error: {message}"]


# ---------------------------------------------------------------- train_tokenizer

@pytest.mark.parametrize("case", ["invalid_utf8", "malformed_json", "missing_field", "no_text"])
def test_train_tokenizer_bad_input_is_one_line_not_a_sentencepiece_traceback(tmp_path, capfd, case):
    path = tmp_path / "in.jsonl"
    if case == "invalid_utf8":
        bad_utf8_file(path, bad_line=3, column=7)
        want = f"{path}:3: invalid UTF-8: byte 0xff at column 7"
    elif case == "malformed_json":
        path.write_bytes(b"\n".join(chat_lines(3) + [b'{"messages": [}']) + b"\n")
        want = f"{path}:4: malformed JSON: Expecting value at column 15"
    elif case == "missing_field":
        path.write_bytes(b"\n".join(chat_lines(3) + [b'{"msgs": 1}']) + b"\n")
        want = f"{path}:4: missing field 'messages'"
    else:
        path.write_text("\n \n")
        want = f"{path}: no text to train on"
    code, _, err = run(_main("train_tokenizer"), [str(path), "--out", str(tmp_path / "tok"), "--vocab-size", "100"],
                       capfd)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {want}"), err
    assert ("--on-bad skip" in err[0]) == (case != "no_text")
    assert os.listdir(tmp_path) == ["in.jsonl"]  # no tokenizer, no temporary directory


def test_train_tokenizer_on_bad_skip_counts_and_trains(tmp_path, capfd):
    path = tmp_path / "in.jsonl"
    lines = chat_lines(40)
    lines[5] = lines[5][:30] + b"\xfe" + lines[5][30:]
    lines[9] = b"{oops"
    path.write_bytes(b"\n".join(lines))  # and no final newline: the last record counts
    code, out, err = run(_main("train_tokenizer"), [str(path), "--out", str(tmp_path / "tok"), "--vocab-size", "100",
                                                    "--on-bad", "skip"], capfd)
    assert code == 0, err
    assert "records read 38 | dropped 2 (1 invalid UTF-8, 1 malformed JSON) | strings 76" in out


def test_train_tokenizer_flag_errors(tmp_path, capfd):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(chat_lines(3)) + b"\n")
    code, _, err = run(_main("train_tokenizer"), [str(path), "--out", str(tmp_path / "t"), "--vocab-size", "9",
                                                  "--k-pred", "4"], capfd)
    assert code == 2 and err == ["error: --vocab-size 9 leaves no room for learned pieces (the 9 special tokens "
                                 "take ids 0..8)"]
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_sentencepiece_errors_from_an_iterator_surface_as_themselves(tmp_path):
    from data_tools.tokenizer import train_sentencepiece

    def texts():
        yield "lines with a vowel"
        raise DataError("boom", file="f.jsonl", line=7)

    with pytest.raises(DataError, match="^f.jsonl:7: boom$"):
        train_sentencepiece(texts(), str(tmp_path / "t"), vocab_size=50, k=1)


def test_long_lines_reach_sentencepiece_in_pieces():
    from data_tools.train_tokenizer import MAX_SENTENCE_BYTES, sentences

    words = [f"w{i}é" for i in range(3000)]
    text = " ".join(words) + "\n" + "x" * 9000 + "\nshort"
    pieces = list(sentences(text))
    assert all(0 < len(p.encode()) <= MAX_SENTENCE_BYTES for p in pieces)
    xs = [p for p in pieces if p.startswith("x")]
    assert len(xs) == 3 and "".join(xs) == "x" * 9000 and pieces[-1] == "short"
    assert " ".join(pieces[:-4]).split() == words  # cut at spaces, nothing lost


# ---------------------------------------------------------------- eval reads JSONL the same way

def test_eval_read_records_uses_the_same_reader(tmp_path):
    from megajepa.eval.run import read_records

    path = bad_utf8_file(tmp_path / "in.jsonl", bad_line=2, column=9)
    with pytest.raises(DataError, match=f"^{path}:2: invalid UTF-8: byte 0xff at column 9$"):
        read_records(path)


# ---------------------------------------------------------------- tokenizer names and the hub

@pytest.fixture
def hub(monkeypatch):
    """A fake Hugging Face hub transport: counts requests, answers with ``hub.respond(request)``."""
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    class Hub:
        requests: list = []

        def asked(self, name):  # requests about ``name`` (huggingface_hub may also fetch its own metadata)
            return [u for u in self.requests if name in u]

        def respond(self, request):
            raise httpx2.ConnectError("[Errno -2] Name or service not known", request=request)

    h = Hub()
    h.requests = []

    def handler(request):
        h.requests.append(str(request.url))
        return h.respond(request)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    yield h
    set_client_factory(default_client_factory)


def test_a_relative_name_that_is_no_folder_fails_at_once(hub, tmp_path, monkeypatch, capfd):
    from data_tools.tokenizer import load_tokenizer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^no such directory: tokk \("):
        load_tokenizer("tokk")
    (tmp_path / "in.jsonl").write_text(json.dumps(CHAT) + "\n")
    code, _, err = run(_main("preprocess"), ["in.jsonl", "--tokenizer", "tokk", "--out", "st"], capfd)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no such directory: tokk")
    assert hub.requests == []  # never asked the hub
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_a_hub_name_gets_one_attempt_and_a_clear_offline_message(hub):
    from data_tools.tokenizer import load_tokenizer

    with pytest.raises(DataError, match="nobody-megajepa/no-such-tokenizer: not a local path, and the Hugging Face "
                                        "hub cannot be reached .*HF_HUB_OFFLINE=1"):
        load_tokenizer("nobody-megajepa/no-such-tokenizer")
    assert len(hub.asked("nobody-megajepa/no-such-tokenizer")) == 1


def test_a_hub_name_the_hub_does_not_have(hub):
    import httpx2

    from data_tools.tokenizer import load_tokenizer

    hub.respond = lambda request: httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"}, request=request)
    with pytest.raises(DataError, match="no model of that name on the Hugging Face hub"):
        load_tokenizer("nobody-megajepa/no-such-tokenizer")
    assert len(hub.asked("no-such-tokenizer")) == 1


def test_offline_mode_never_asks_the_hub(hub, monkeypatch):
    from huggingface_hub import constants

    from data_tools.tokenizer import load_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        load_tokenizer("nobody-megajepa/no-such-tokenizer")
    assert hub.requests == []


def test_hf_dataset_names_follow_the_same_rule(hub, tmp_path, monkeypatch):
    from data_tools.readers import read_records

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^no such file or directory: corpus_dir \("):
        list(read_records("corpus_dir", hf=True))
    assert hub.requests == []
    with pytest.raises(DataError, match="dataset nobody-megajepa/no-such-data: not a local path, and the Hugging "
                                        "Face hub cannot be reached"):
        list(read_records("nobody-megajepa/no-such-data", hf=True))
    assert len(hub.asked("nobody-megajepa/no-such-data")) == 1


def test_repo_id_shapes():
    from data_tools.hub import is_repo_id

    assert is_repo_id("meta-llama/Llama-3.2-1B") and is_repo_id("Qwen/Qwen2.5-0.5B")
    for name in ("tokk", "./tok", "runs/a/tokenizer", "/abs/tok", "data/train.jsonl", "../x/y", "a//b", "tok/"):
        assert not is_repo_id(name), name


# ---------------------------------------------------------------- --help

TOOLS = ["generate", "preprocess", "train_tokenizer", "compare_nlrx", "get_nlrx"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_plain_text_and_every_flag_has_help(tool):
    import importlib

    parser = importlib.import_module(f"data_tools.{tool}").build_parser()
    text = parser.format_help()
    for markup in (":mod:", ":func:", ":class:", ":meth:", "``"):
        assert markup not in text, (tool, markup)
    for action in parser._actions:
        assert action.help and action.help.strip(), (tool, action.option_strings or action.dest)
    assert text.startswith(f"usage: python -m data_tools.{tool}")


def test_help_from_the_command_line():
    r = subprocess.run([sys.executable, "-m", "data_tools.train_tokenizer", "--help"], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0 and "``" not in r.stdout and ":mod:" not in r.stdout
    assert "--on-bad" in r.stdout and "--hf-split HF_SPLIT   split to read" in r.stdout
