"""One error type for bad input, and the CLI wrapper that turns it into ``error: <file>:<line>: <what>``.

Every reader raises :class:`DataError` with the file (or dataset) and line (or row) it was
reading; every command runs through :func:`run_cli`, which prints the message to stderr and
exits with status 2, after the writer has removed its temporary output.
"""
from __future__ import annotations

import sys
from typing import Callable


class DataError(Exception):
    """Bad input: ``DataError(what, file=..., line=...)`` renders as ``file:line: what``."""

    def __init__(self, what: str, *, file: str | None = None, line: int | None = None):
        self.what, self.file, self.line = what, file, line
        super().__init__(self.location() + what)

    def location(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "


EXIT_BAD_INPUT = 2


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a :class:`DataError` becomes ``error: <file>:<line>: <what>`` and exit 2."""
    try:
        main(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _rebuild(what, file, line):
    return DataError(what, file=file, line=line)


DataError.__reduce__ = lambda self: (_rebuild, (self.what, self.file, self.line))  # survives worker processes
