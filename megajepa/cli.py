"""Command-line plumbing shared by megajepa's tools (eval, export, analyze, scripts/sweep.py).

* :class:`HelpFormatter`: descriptions print as written (plain text, no Sphinx markup), and
  an option's default is appended as ``(default: X)`` only when it says something: not for
  ``None``, ``False``, an empty string, or a help text that already names its default.
* :func:`positive_int`: argparse type for counts that must be >= 1.
* :func:`glue_pass_through`: ``--train-flags "--lr 1e-4"`` as written (argparse alone reads a
  value that starts with ``--`` as an option and stops: "expected one argument").
* :func:`child_env`: the environment for child processes of the scripts (this checkout
  importable from any working directory).
* :func:`add_template_args`: ``--template`` and ``--system-in-plain``, as training laid out
  the views (eval and analyze must build them the same way).
* :func:`must_exist`: a missing input path is bad input, one line:
  ``error: --data d.jsonl: does not exist`` (exit 2 through ``data_tools.errors.run_cli``);
  :func:`output_dir`: an output folder that is a file, likewise.
"""
from __future__ import annotations

import argparse
import os

from data_tools.errors import DataError

__all__ = ["HelpFormatter", "positive_int", "must_exist", "output_dir", "add_template_args",
           "child_env", "glue_pass_through"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default:" in text or "(default" in text or not action.option_strings or default is argparse.SUPPRESS
                or default is None or default is False or default == ""):
            return text
        return f"{text} (default: %(default)s)"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def must_exist(path, flag: str, *, kind: str = "any") -> str:
    """``path`` as a string if it exists (``kind``: ``any``, ``file`` or ``dir``), else
    :class:`DataError` naming the flag and the path."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"{flag} {path}: does not exist")
    if kind == "file" and not os.path.isfile(path):
        raise DataError(f"{flag} {path}: is a directory, expected a file")
    if kind == "dir" and not os.path.isdir(path):
        raise DataError(f"{flag} {path}: is a file, expected a directory")
    return path


def output_dir(path, flag: str = "--out") -> str:
    """``path`` as a string unless it exists and is not a folder (then :class:`DataError`)."""
    path = str(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{flag} {path}: exists and is not a folder")
    return path


def add_template_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--template {plain,chat}`` and ``--system-in-plain``; ``what`` names the layout
    (``"prompt layout"``, ``"view layout"``) and the plain form it shows."""
    p.add_argument("--template", choices=("plain", "chat"), default="plain",
                   help=f"{what}, as in training: plain = {_PLAIN[what]}; chat = the "
                        "tokenizer's chat template")
    p.add_argument("--system-in-plain", action="store_true",
                   help="plain template: put the system prompt before the user text (only if "
                        "the training data was preprocessed with --system-in-plain)")


_PLAIN = {"prompt layout": "<s> user <sep>", "view layout": "<s> user <sep> / assistant </s>"}


def child_env() -> dict:
    """``os.environ`` with this checkout first on ``PYTHONPATH`` (``-m megajepa.eval`` and
    ``pretrain.py`` importable from any cwd)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def glue_pass_through(argv, flags) -> list:
    """``argv`` with each of ``flags`` joined to its value (``--train-flags VALUE`` ->
    ``--train-flags=VALUE``), so that a value holding other tools' flags parses."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
