"""Held-out chat records as plain dicts, for evaluation: ``{"system", "user", "assistant",
...extra}`` (extra top-level fields such as ``db_id`` are kept; a record may also be such a dict
already). Training reads its data through :mod:`data_tools.readers` instead.
"""
from __future__ import annotations

import os
from typing import Optional

from .errors import DataError
from .readers import iter_jsonl

__all__ = ["as_record", "read_records"]


def as_record(obj, *, file: Optional[str] = None, line: Optional[int] = None) -> dict:
    """``{"system", "user", "assistant", ...extra}`` from a chat-messages record (or such a
    dict already). Extra top-level fields (e.g. ``db_id``) are kept."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=file, line=line)
    if "messages" not in obj:
        missing = [k for k in ("user", "assistant") if not isinstance(obj.get(k), str)]
        if missing:
            raise DataError(f"record has no 'messages' and no string {missing[0]!r}",
                            file=file, line=line)
        return dict(obj)
    messages = obj["messages"]
    if not isinstance(messages, list):
        raise DataError("'messages' must be a list", file=file, line=line)
    out = {k: v for k, v in obj.items() if k != "messages"}
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError("each message needs a string 'content'", file=file, line=line)
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise DataError(f"unknown message role {role!r}", file=file, line=line)
        out.setdefault(role, m["content"])  # the first message of each role
    for role in ("user", "assistant"):
        if role not in out:
            raise DataError(f"no {role} message", file=file, line=line)
    return out


def read_records(path, limit: Optional[int] = None) -> list:
    """Records of a chat-messages JSONL file; bad lines raise ``DataError`` (file:line)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError("no such file" if not os.path.exists(path) else "not a file", file=path)
    out = []
    for n, obj in iter_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        out.append(as_record(obj, file=path, line=n))
    if not out:
        raise DataError("no records", file=str(path))
    return out
