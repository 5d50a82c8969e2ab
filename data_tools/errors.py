"""One error type for bad input, and the CLI wrapper that turns it into ``error: <file>:<line>: <what>``.

Every reader raises :class:`DataError` with the file (or dataset) and line (or row) it was
reading; every command runs through :func:`run_cli`, which prints the message to stderr on
one line and exits with status 2, after the writer has removed its temporary output.  An
error about one record (``skippable``) says how to skip such records when the command can.
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_BAD_INPUT = 2
SKIP_HINT = "fix it, or pass --on-bad skip to skip bad records (they are counted)"


class DataError(ValueError):
    """Bad input: ``DataError(what, file=..., line=...)`` renders as ``file:line: what``.

    ``skippable``: the fault is in one record, so ``--on-bad skip`` could step over it."""

    def __init__(self, what: str, *, file: str | None = None, line: int | None = None,
                 skippable: bool = False):
        self.what, self.file, self.line, self.skippable = what, file, line, skippable
        super().__init__(self.location() + what)

    def location(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "

    def __reduce__(self):  # survives worker processes
        return (_rebuild, (self.what, self.file, self.line, self.skippable))


def _rebuild(what, file, line, skippable=False):
    return DataError(what, file=file, line=line, skippable=skippable)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None, *,
            skip_hint: bool = False) -> int:
    """Run ``main(argv)``; a :class:`DataError` becomes ``error: <file>:<line>: <what>`` and exit 2.

    ``skip_hint``: the command has ``--on-bad skip``; a record-level error then says so."""
    try:
        main(argv)
    except DataError as e:
        hint = f"; {SKIP_HINT}" if skip_hint and e.skippable else ""
        print(f"error: {' '.join(str(e).split())}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
