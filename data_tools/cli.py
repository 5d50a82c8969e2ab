"""Argument parsers for the ``data_tools`` commands: the module docstring is the description,
printed as written but without Sphinx markup (``:mod:`x``` and double backticks read as ``x``)."""
from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def plain(doc: str) -> str:
    """``doc`` with Sphinx roles and literals reduced to their text."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", doc or ""))


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for ``python -m data_tools.<prog>`` described by ``doc``."""
    return argparse.ArgumentParser(prog=f"python -m data_tools.{prog}", description=plain(doc),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
