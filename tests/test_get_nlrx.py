"""data_tools.get_nlrx, offline: local copies (--from) and the download path through file:// URLs."""
import hashlib
import json
import os

import pytest

from data_tools import get_nlrx, nlrx
from data_tools.errors import run_cli


def publish(folder, sets=("synth",), n=(12, 4), bad=None):
    """Small stand-ins for the published files: ``{name: bytes}`` written into ``folder``."""
    folder.mkdir(exist_ok=True)
    out = {}
    for s in sets:
        for split, count in zip(("train", "test"), n):
            recs = [nlrx.chat_record(r["description"], r["regex"]) for r in nlrx.generate_pairs(count, seed=1,
                                                                                                split=split)]
            lines = [json.dumps(r) for r in recs]
            if bad == f"{s}_{split}.jsonl":
                lines[2] = json.dumps({"messages": [{"role": "user", "content": "x"}]})
            data = ("\n".join(lines) + "\n").encode()
            (folder / f"{s}_{split}.jsonl").write_bytes(data)
            out[f"{s}_{split}.jsonl"] = data
    return out


def run(argv, capfd):
    code = run_cli(get_nlrx.main, argv)
    out, err = capfd.readouterr()
    return code, out, err.strip().splitlines()


@pytest.mark.parametrize("how", ["from", "url"])
def test_copies_are_checked_and_written_byte_for_byte(tmp_path, capfd, how):
    files = publish(tmp_path / "pub", sets=("synth", "turk"))
    src = ["--from", str(tmp_path / "pub")] if how == "from" else ["--base-url", (tmp_path / "pub").as_uri() + "/"]
    code, out, err = run(["--out", str(tmp_path / "data"), "--sets", "synth,turk", *src], capfd)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "data")) == ["nlrx_synth_test.jsonl", "nlrx_synth_train.jsonl",
                                                     "nlrx_turk_test.jsonl", "nlrx_turk_train.jsonl"]
    for name, data in files.items():
        assert (tmp_path / "data" / f"nlrx_{name}").read_bytes() == data
    assert out.startswith("records 32 (nlrx_synth_train.jsonl 12, nlrx_synth_test.jsonl 4,")
    assert "differs from the published file" in out  # stand-ins, not the real files
    code, _, err = run(["--out", str(tmp_path / "data"), *src], capfd)
    assert code == 2 and "--overwrite" in err[0]


def test_a_bad_record_stops_everything(tmp_path, capfd):
    publish(tmp_path / "pub", bad="synth_test.jsonl")
    code, _, err = run(["--out", str(tmp_path / "data"), "--from", str(tmp_path / "pub")], capfd)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'pub' / 'synth_test.jsonl'}:3: expected messages")
    assert not (tmp_path / "data").exists() or os.listdir(tmp_path / "data") == []


def test_a_download_that_differs_from_the_published_file_is_refused(tmp_path, capfd, monkeypatch):
    files = publish(tmp_path / "pub")
    monkeypatch.setattr(get_nlrx, "BASE_URL", (tmp_path / "pub").as_uri() + "/")
    code, _, err = run(["--out", str(tmp_path / "data"), "--base-url", get_nlrx.BASE_URL], capfd)
    assert code == 2 and "checksum mismatch" in err[0] and not (tmp_path / "data").exists()
    monkeypatch.setitem(get_nlrx.SHA256, "synth_train.jsonl", hashlib.sha256(files["synth_train.jsonl"]).hexdigest())
    monkeypatch.setitem(get_nlrx.SHA256, "synth_test.jsonl", hashlib.sha256(files["synth_test.jsonl"]).hexdigest())
    code, out, err = run(["--out", str(tmp_path / "data"), "--base-url", get_nlrx.BASE_URL], capfd)
    assert code == 0 and "differs from the published" not in out


@pytest.mark.parametrize("argv, message", [
    (["--from", "nowhere"], "error: nowhere: no such directory (--from)"),
    (["--sets", "kb13"], "error: --sets: unknown set kb13 (one of synth, turk)"),
    (["--base-url", "file:///nonexistent-megajepa/"], "error: file:///nonexistent-megajepa/synth_train.jsonl: "
                                                      "cannot download"),
])
def test_bad_sources(tmp_path, capfd, argv, message):
    code, _, err = run(["--out", str(tmp_path / "data"), *argv], capfd)
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "data").exists()


def test_missing_local_file(tmp_path, capfd):
    (tmp_path / "pub").mkdir()
    code, _, err = run(["--out", str(tmp_path / "data"), "--from", str(tmp_path / "pub")], capfd)
    assert code == 2 and err == [f"error: {tmp_path / 'pub'}: no synth_train.jsonl (or nlrx_synth_train.jsonl) in "
                                 "this folder"]
