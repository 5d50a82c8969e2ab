"""Every command the docs show answers ``--help``, and every flag the docs use is in it.

The commands are read from README.md and docs/*.md (fenced/indented lines and inline code
spans that start with ``python``/``deepspeed``/a script, with ``\\`` continuations, and the
quoted command templates inside them). A flag used after a tool must appear in that tool's
``--help``; a flag named alone in the prose (`` `--resume` ``) must appear in some project
tool's help (or be a launcher flag). ``pretrain.py --help`` also lists every config field.
"""
import argparse
import contextlib
import dataclasses
import glob
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
FLAG = re.compile(r"--[a-z][\w.-]*")
# Flags of the launchers the docs show around our tools (deepspeed, torchrun), not ours.
LAUNCHER_FLAGS = {"--num_gpus", "--num_nodes", "--hostfile", "--master_port", "--master_addr",
                  "--include", "--exclude", "--nproc_per_node", "--logdir"}
# Flags of the authors' finetune.py (github galilai-group/llm-jepa), named where
# docs/training.md compares the two recipes and docs/benchmarks.md times their script.
REFERENCE_FLAGS = {"--predictors", "--last_token", "--pretrain", "--additive_mask"}
START = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:python3?|deepspeed|\{python\}|scripts/\S+\.sh)\b")


def tool_argv(tokens):
    """``(tool name, argv to run it, flags after it)`` for a command's tokens, else None."""
    for i, t in enumerate(tokens):
        if t == "-m" and i + 1 < len(tokens):
            mod = tokens[i + 1]
            if mod.split(".")[0] not in ("megajepa", "data_tools"):
                return None  # pip, pytest, ...
            return mod, [sys.executable, "-m", mod], tokens[i + 2:]
        if re.fullmatch(r"(scripts/([\w-]+/)?)?[\w-]+\.(py|sh)", t):
            argv = ["bash", t] if t.endswith(".sh") else [sys.executable, t]
            return t, argv, tokens[i + 1:]
    return None


def doc_commands():
    """Command strings shown in the docs, with ``\\`` continuations joined."""
    out = []
    for path in DOCS:
        buf = None
        for line in open(path, encoding="utf-8"):
            s = line.strip()
            out += [span for span in re.findall(r"`([^`]+)`", s) if START.match(span)]
            if buf is not None:
                buf += " " + s.rstrip("\\")
                if not s.endswith("\\"):
                    out.append(buf)
                    buf = None
            elif START.match(s) or re.match(r"^[A-Z_]+=['\"]", s):
                if s.endswith("\\"):
                    buf = s.rstrip("\\")
                else:
                    out.append(s)
    return out


def flags_in(tokens):
    """``--flag`` tokens (``[--opt]`` and ``--opt=value`` forms too)."""
    return {m.group(0) for t in tokens if (m := FLAG.fullmatch(t.strip("[]").split("=")[0]))}


PASS_THROUGH = "--train-flags"  # table1.py: a string of pretrain.py flags


def split_pretrain_flags(tokens):
    """``(tokens without the --train-flags values, the pretrain.py flags inside them)``."""
    kept, passed, i = [], [], 0
    while i < len(tokens):
        t = tokens[i]
        if t == PASS_THROUGH and i + 1 < len(tokens):
            passed += shlex.split(tokens[i + 1])
            i += 2
            continue
        if t.startswith(PASS_THROUGH + "="):
            passed += shlex.split(t.split("=", 1)[1])
        else:
            kept.append(t)
        i += 1
    return kept, passed


def used_flags():
    """``{tool: (argv, {flags})}`` over every documented command (and nested templates)."""
    found = {}

    def visit(cmd):
        try:
            tokens = shlex.split(cmd, comments=True)
        except ValueError:
            tokens = cmd.split()
        tokens = [t.split("=", 1)[1] if re.match(r"^[A-Z_]+=", t) else t for t in tokens]
        for t in tokens:  # a quoted command template inside the command: its own command
            if " " in t and (START.match(t) or re.search(r"\s-m\s|\.py\s", t)):
                visit(t)
        hit = tool_argv(tokens)
        if hit:
            name, argv, rest = hit
            if name.endswith(".sh") and "--" in rest:  # recipe -- flags for pretrain.py
                cut = rest.index("--")
                rest, extra = rest[:cut], rest[cut + 1:]
                found.setdefault("pretrain.py", ([sys.executable, "pretrain.py"], set()))[1] \
                    .update(flags_in(extra))
            rest, passed = split_pretrain_flags(rest)
            if passed:
                found.setdefault("pretrain.py", ([sys.executable, "pretrain.py"], set()))[1] \
                    .update(flags_in(passed))
            found.setdefault(name, (argv, set()))[1].update(flags_in(rest))

    for cmd in doc_commands():
        visit(cmd)
    # A tool shown without flags is not run with --help (a bare GPU benchmark would just run).
    return {name: v for name, v in found.items() if v[1] - {"--help"} or name == "pretrain.py"}


def prose_flags():
    flags = set()
    for path in DOCS:
        flags |= set(re.findall(r"`(--[a-z][\w.-]*)", open(path, encoding="utf-8").read()))
    return flags - {"--section.field"}


USED = used_flags()


def options(text):
    """``{flag: help block}`` from argparse's option lines (``  --a A, --b A   help...``),
    so flags merely mentioned in a description do not count."""
    blocks, current = {}, None
    for line in text.splitlines():
        if re.match(r"^\s{1,8}-", line):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            current = [line]
            for flag in FLAG.findall(invocation[0]):
                blocks[flag] = current
        elif current is not None and line.startswith(" " * 9):
            current.append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(b).split()) for flag, b in blocks.items()}


def listed(tool, text):
    """Flags a tool's help offers: argparse option lines; a shell recipe's free-form header
    (which documents its few flags in prose) counts every flag it names."""
    return set(FLAG.findall(text)) if tool.endswith(".sh") else set(options(text))


def run_help(argv):
    """``(exit code, output)`` of ``argv + ["--help"]``. Python tools run in this process
    (runpy, as ``python -m``/``python file`` would; saves a torch import per tool)."""
    if argv[0] == "bash":
        p = subprocess.run(argv + ["--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stdout + p.stderr
    out = io.StringIO()
    code = 0
    try:
        run_in_process(argv, ["--help"], out)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue()


def run_in_process(argv, args, out) -> None:
    """Run the Python tool of ``argv`` with ``args`` in this process, as ``python -m`` or
    ``python file`` would, its output into ``out``."""
    old_argv = sys.argv
    target = argv[-1] if argv[1] == "-m" else os.path.join(ROOT, argv[-1])
    sys.argv = [target, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            if argv[1] == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
    finally:
        sys.argv = old_argv


@pytest.fixture(scope="module")
def helps():
    """``{tool: (exit code, output)}`` of ``<tool> --help`` for every documented tool."""
    return {name: run_help(argv) for name, (argv, _) in USED.items()}


def test_the_docs_show_the_main_tools():
    """The extraction itself works (else every check below would pass vacuously)."""
    want = {"pretrain.py", "data_tools.generate", "data_tools.train_tokenizer",
            "data_tools.preprocess", "megajepa.export", "megajepa.eval", "scripts/sweep.py"}
    assert want <= set(USED), sorted(USED)
    assert {"--data.train", "--k", "--lambda"} <= USED["pretrain.py"][1]
    assert {"--tokenizer", "--out"} <= USED["data_tools.preprocess"][1]


@pytest.mark.parametrize("tool", sorted(USED))
def test_documented_flags_are_in_help(helps, tool):
    code, text = helps[tool]
    assert code == 0, f"{tool} --help exited {code}:\n{text[-2000:]}"
    offered = listed(tool, text)
    assert tool.endswith(".sh") or "--help" in offered, text[-2000:]
    missing = sorted(USED[tool][1] - offered)
    assert not missing, f"the docs use {missing} with {tool}, but its --help does not list them"


def test_flags_named_in_prose_exist(helps):
    offered = LAUNCHER_FLAGS | REFERENCE_FLAGS
    for tool, (_, text) in helps.items():
        offered |= listed(tool, text)
    missing = sorted(prose_flags() - offered)
    assert not missing, f"the docs name {missing}, which no documented tool's --help lists"


def test_pretrain_help_lists_every_config_field_with_its_default(helps):
    from megajepa.config import ALIASES, Config

    code, text = helps["pretrain.py"]
    assert code == 0
    opts = options(text)
    cfg = Config()
    for sec in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, sec.name)):
            flag = f"--{sec.name}.{f.name}"
            assert flag in opts, f"{flag} not in pretrain.py --help"
            assert "default" in opts[flag], f"{flag} shows no default: {opts[flag]}"
    assert {f"--{a}" for a in ALIASES} <= set(opts)
    # DESIGN: the paper's knobs are discoverable under their words.
    assert "predictor tokens" in opts["--k"] and opts["--k"] == opts["--jepa.k"]
    assert "--lambda" in opts["--jepa.lbd"] and "JEPA loss" in opts["--lambda"]
    assert "next-token loss" in opts["--gamma"]
    assert "default: 256" in opts["--data.seq_len"]


# A wrapper that hands its whole command line to another program (no parser of its own).
PASSTHROUGH = {"anchor_launch.py"}


@pytest.mark.parametrize("script", sorted(
    os.path.relpath(p, os.path.join(ROOT, "scripts")) for pattern in ("*.py", "*/*.py")
    for p in glob.glob(os.path.join(ROOT, "scripts", pattern)) if not os.path.basename(p).startswith("_")))
def test_every_script_answers_help_without_running(script):
    """``--help`` prints usage and exits 0 at once (a script without a parser would start its
    benchmark); a pass-through wrapper refuses it in one line instead."""
    code, text = run_help([sys.executable, f"scripts/{script}"])
    if os.path.basename(script) in PASSTHROUGH:
        assert code == 2 and text.strip().startswith("error:") and len(text.strip().splitlines()) == 1, text
        return
    assert code == 0 and text.lstrip().startswith("usage:"), f"{script} --help exited {code}:\n{text[-1500:]}"
    assert "--help" in options(text), text[-1500:]


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a command line parsed: nothing runs."""


def parse_only(argv, args):
    """``None`` if ``args`` parse with the tool's own parser, else argparse's message. The tool
    runs in this process up to its ``parse_args``; values are not type-checked (the docs' paths
    and ``$VARIABLES`` need not exist here): what is checked is which flags exist, how many
    values each takes, and the required ones."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, a=None, namespace=None):
        for action in self._actions:
            action.type, action.choices = None, None
        real(self, a, namespace)
        raise _Parsed

    out = io.StringIO()
    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        run_in_process(argv, args, out)
    except _Parsed:
        return None
    except SystemExit as e:
        return f"exit {e.code}: {out.getvalue().strip()[-600:]}"
    finally:
        argparse.ArgumentParser.parse_args = real
    return f"{argv[-1]} never called parse_args: {out.getvalue()[-600:]}"


def documented_command_lines():
    """``[(command, tool argv, args)]``: every documented command of a Python tool, the
    skipped and slow blocks included (the docs test runs only the others)."""
    out = []
    for cmd in doc_commands():
        if re.search(r"\[--|<[^>]*\|", cmd):
            continue   # a synopsis ([--flag], <a | b>), not a command
        try:
            tokens = shlex.split(cmd, comments=True)
        except ValueError:
            continue
        tokens = [t.split("=", 1)[1] if re.match(r"^[A-Z_]+=", t) else t for t in tokens]
        cut = next((i for i, t in enumerate(tokens) if t in ("&&", "||", "|", ";", ">", "2>&1")),
                   len(tokens))
        hit = tool_argv(tokens[:cut])
        if not hit or hit[0].endswith(".sh") or os.path.basename(hit[0]) in PASSTHROUGH:
            continue
        if any(t.startswith("[") or t in ("...", "…") for t in hit[2]):
            continue   # a synopsis too
        if "--help" in hit[2]:
            continue
        out.append((cmd, hit[1], hit[2]))
    return out


DOCUMENTED = documented_command_lines()


def test_documented_commands_were_found():
    tools = {argv[-1] for _, argv, _ in DOCUMENTED}
    assert {"pretrain.py", "scripts/table1.py", "data_tools.preprocess"} <= tools, sorted(tools)


def test_every_documented_command_parses():
    """The commands too long to run in the tests (the Table 1 experiments, the GPU recipes)
    at least parse as written: a value that argparse would read as an option, a flag that
    lost its value, a missing required flag each fail here."""
    bad = [f"{cmd}\n  -> {why}" for cmd, argv, args in DOCUMENTED
           if (why := parse_only(argv, args)) is not None]
    assert not bad, "documented commands that do not parse:\n" + "\n".join(bad)
