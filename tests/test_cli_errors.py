"""First-hour UX of eval / export / analyze / sweep: a missing input is one ``error:`` line and
exit 2 with nothing written; ``--help`` is plain text that lists every documented flag."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.errors import run_cli
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
RECORD = ('{"messages": [{"role": "user", "content": "a"}, '
          '{"role": "assistant", "content": "b"}]}\n')


def _sweep_module():
    return load_script("sweep")


def _eval_main(argv):
    from megajepa.eval.__main__ import main
    return run_cli(main, argv)


def _analyze_main(argv):
    from megajepa.analyze import main
    return run_cli(main, argv)


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("run", [_eval_main, _analyze_main], ids=["eval", "analyze"])
def test_missing_data_or_model_is_one_line_exit_2(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = ["--task", "nlrx"] if run is _eval_main else []
    (tmp_path / "d.jsonl").write_text(RECORD)
    (tmp_path / "model").mkdir()

    assert run(["--model", "model", "--data", "missing.jsonl", "--out", "o", *task]) == 2
    _one_error_line(capsys, "--data missing.jsonl: does not exist")
    assert run(["--model", "no/such/model", "--data", "d.jsonl", "--out", "o", *task]) == 2
    _one_error_line(capsys, "--model no/such/model: does not exist")
    assert run(["--model", "model", "--data", ".", "--out", "o", *task]) == 2
    _one_error_line(capsys, "--data .: is a directory")
    # an existing folder that is neither a model nor a run: says so, and how to make one
    assert run(["--model", "model", "--data", "d.jsonl", "--out", "o", *task]) == 2
    _one_error_line(capsys, "not a Hugging Face model directory", "megajepa.export")
    (tmp_path / "bad.jsonl").write_text(RECORD + '{"messages": [\n')
    assert run(["--model", "model", "--data", "bad.jsonl", "--out", "o", *task]) == 2
    _one_error_line(capsys, "bad.jsonl:2: malformed JSON")
    assert not (tmp_path / "o").exists()
    (tmp_path / "afile").write_text("x")
    assert run(["--model", "model", "--data", "d.jsonl", "--out", "afile", *task]) == 2
    _one_error_line(capsys, "--out afile: exists and is not a folder")


def test_eval_bad_flag_values_exit_2(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(RECORD)
    base = ["--model", str(tmp_path), "--data", str(data), "--task", "nlrx", "--out",
            str(tmp_path / "o")]
    for flag in ("--max-new-tokens", "--batch-size", "--limit"):
        with pytest.raises(SystemExit) as e:
            _eval_main(base + [flag, "0"])
        assert e.value.code == 2
        assert f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err
    assert _eval_main(base[:-4] + ["--task", "sql", "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "--task sql needs --db-dir")


def test_eval_cli_process_exit_code_and_single_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "megajepa.eval", "--model", "nope", "--data",
                          "missing.jsonl", "--task", "nlrx", "--out", "o"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2, res.stderr
    assert res.stderr == "error: --data missing.jsonl: does not exist\n"
    assert not (tmp_path / "o").exists()


def test_export_missing_checkpoint(tmp_path, capsys):
    from megajepa.export import main

    assert main([str(tmp_path / "nope"), str(tmp_path / "hf")]) == 2
    _one_error_line(capsys, "nope: does not exist")
    assert main([str(tmp_path), str(tmp_path / "hf")]) == 2   # exists, holds no checkpoint
    _one_error_line(capsys, "no complete checkpoint")
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------ help
def _parsers():
    from megajepa.analyze import build_parser as analyze
    from megajepa.eval.__main__ import build_parser as evaluate
    from megajepa.export import build_parser as export

    return {"megajepa.eval": evaluate(), "megajepa.export": export(),
            "megajepa.analyze": analyze(), "scripts/sweep.py": _sweep_module().build_parser()}


def _documented_flags(tool: str) -> set:
    """Flags written after ``tool`` in the commands of README.md and docs/*.md."""
    flags = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            at = line.find(tool + " ")
            if at >= 0:
                # stop at the next command (; && | or another python invocation)
                cmd = re.split(r"[;|&]|\bpython3? ", line[at + len(tool):])[0]
                flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cmd))
    return flags


@pytest.mark.parametrize("tool", ["megajepa.eval", "megajepa.export", "megajepa.analyze",
                                  "scripts/sweep.py"])
def test_help_is_plain_and_documents_every_flag(tool):
    parser = _parsers()[tool]
    text = parser.format_help()
    for markup in (":mod:", ":func:", ":class:", "``", "(default: None)", "(default: )",
                   "(default: False)", "(default: [", "default: cuda if available) (default"):
        assert markup not in text, (tool, markup)
    options = {s for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, (tool, action.option_strings or action.dest)
    documented = _documented_flags(tool)
    assert documented - options == set(), f"{tool}: documented flags missing from --help"
    assert documented or tool == "megajepa.export"  # the docs do use these tools


def test_specific_help_texts():
    parsers = {k: " ".join(p.format_help().split()) for k, p in _parsers().items()}
    ev = parsers["megajepa.eval"]
    assert re.search(r"--task \{[a-z0-9,]+\} metrics: nlrx: exact, startswith, semantic", ev)
    assert "--device DEVICE cuda or cpu; default: cuda if available --dtype" in ev
    an = parsers["megajepa.analyze"]
    for name in ("diagnostics.json", "singular_values.png", "tsne.png"):
        assert name in an
    sw = parsers["scripts/sweep.py"]
    assert "({config}) (default: )" not in sw and "{pretrain}" in sw
    assert "(default: 1,2,4)" in sw


def test_help_formatter_defaults():
    from megajepa.cli import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--a", default=3, help="count")
    p.add_argument("--b", default=None, help="path")
    p.add_argument("--c", action="store_true", help="flag")
    p.add_argument("--d", default="x", help="d; default: x unless y")
    text = " ".join(p.format_help().split())
    assert "count (default: 3)" in text and "path --c" in text
    assert "flag --d" in text and "default: x unless y (default" not in text
