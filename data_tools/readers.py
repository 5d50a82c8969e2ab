"""Input readers: every supported format becomes a stream of ``Record(file, line, kind, data)``.

=========  ==============================================================  ======  =====================
format     one record                                                      kind    data
=========  ==============================================================  ======  =====================
chat       ``{"messages": [{"role": "system"?}, {"role": "user"}, {"role":  pair    ``{system, user,
           "assistant"}]}`` (the LLM-JEPA reference datasets)                       assistant}``
group      ``["v1", "v2", ...]`` or ``{"texts": [...]}`` (``--field``)       group   ``[v1, v2, ...]``
cestwc     ``{"paraphrase_set_id": 7, "text": "...", "id": 3}``, one        group   ``[v1, v2, ...]``
           sentence per record, grouped by set id (``cestwc/paraphrase``)
text       a line of plain text (``.txt``), or ``{"text": ...}`` in JSONL   lm      ``"..."``
=========  ==============================================================  ======  =====================

A view may also be a list of ints (already tokenized).  ``line`` is the 1-based line of a
JSONL/text file, or the 1-based row of a ``datasets`` split (``file`` is then
``name[split]``).  Anything malformed raises :class:`DataError` at that file and line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .errors import DataError

FORMATS = ("chat", "group", "cestwc", "text")
KIND_OF = {"chat": "pair", "group": "group", "cestwc": "group", "text": "lm"}
GROUP_FIELDS = ("texts", "paraphrases", "sentences")


@dataclass
class Record:
    file: str
    line: int
    kind: str
    data: Any


# ---------------------------------------------------------------- raw rows

def iter_jsonl(path: str, on_bad=None) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` for every non-blank line; malformed JSON is a :class:`DataError`."""
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except json.JSONDecodeError as e:
                _bad(on_bad, DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=n))


def iter_text(path: str) -> Iterator[tuple[int, str]]:
    """``(line, text)`` for every non-blank line of a plain-text file."""
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            text = raw.rstrip("\n")
            if text.strip():
                yield n, text


def iter_hf(name: str, *, split: str, config: str | None = None) -> Iterator[tuple[int, Any]]:
    """``(row, record)`` of ``datasets.load_dataset(name, config, split=split)`` (hub name or local path)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - report any loading failure as bad input
        raise DataError(f"cannot load dataset: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        file=name) from None
    for n, row in enumerate(ds, 1):
        yield n, row


# ---------------------------------------------------------------- format detection

def detect_format(first: Any, *, file: str, line: int) -> str:
    """Guess the format from the first record."""
    if isinstance(first, list):
        return "group"
    if isinstance(first, dict):
        if "messages" in first:
            return "chat"
        if "paraphrase_set_id" in first:
            return "cestwc"
        if any(k in first for k in GROUP_FIELDS):
            return "group"
        if "text" in first:
            return "text"
    raise DataError(f"unknown format: cannot tell the format of this record (keys: "
                    f"{sorted(first) if isinstance(first, dict) else type(first).__name__}); pass --format",
                    file=file, line=line)


# ---------------------------------------------------------------- per-format parsing

def _view(v: Any, what: str, file: str, line: int):
    if isinstance(v, str):
        if not v.strip():
            raise DataError(f"empty view: {what} is empty", file=file, line=line)
        return v
    if isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        if not v:
            raise DataError(f"empty view: {what} is empty", file=file, line=line)
        return v
    raise DataError(f"wrong type: {what} must be a string (or a list of token ids), got {type(v).__name__}",
                    file=file, line=line)


def parse_chat(obj: Any, *, file: str, line: int, field: str | None = None) -> dict:
    """``{"messages": [system?, user, assistant]}`` -> ``{system, user, assistant}``."""
    field = field or "messages"
    if not isinstance(obj, dict):
        raise DataError(f"wrong type: record must be an object with {field!r}, got {type(obj).__name__}",
                        file=file, line=line)
    if field not in obj:
        raise DataError(f"missing field {field!r}", file=file, line=line)
    msgs = obj[field]
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise DataError(f"wrong type: {field!r} must be a list of {{role, content}} objects", file=file, line=line)
    out: dict = {"system": None}
    roles = []
    for i, m in enumerate(msgs):
        for key in ("role", "content"):
            if key not in m:
                raise DataError(f"missing field {field}[{i}].{key}", file=file, line=line)
        if not isinstance(m["role"], str):
            raise DataError(f"wrong type: {field}[{i}].role must be a string", file=file, line=line)
        roles.append(m["role"])
    if roles[-2:] != ["user", "assistant"] or len(roles) > 3 or (len(roles) == 3 and roles[0] != "system"):
        raise DataError(f"expected messages [system?, user, assistant], got {roles}", file=file, line=line)
    if len(msgs) == 3:
        sys_ = msgs[0]["content"]
        if not isinstance(sys_, str):
            raise DataError("wrong type: system content must be a string", file=file, line=line)
        out["system"] = sys_ or None
    out["user"] = _view(msgs[-2]["content"], "user content", file, line)
    out["assistant"] = _view(msgs[-1]["content"], "assistant content", file, line)
    return out


def parse_group(obj: Any, *, file: str, line: int, field: str | None = None) -> list:
    """A list of strings (or ``record[field]``) -> views; fewer than two is an error."""
    if isinstance(obj, dict):
        keys = [field] if field else [k for k in GROUP_FIELDS if k in obj]
        if not keys or keys[0] not in obj:
            raise DataError(f"missing field {field or '/'.join(GROUP_FIELDS)!r}", file=file, line=line)
        name, views = keys[0], obj[keys[0]]
    else:
        name, views = "record", obj
    if not isinstance(views, list):
        raise DataError(f"wrong type: {name} must be a list of strings, got {type(views).__name__}",
                        file=file, line=line)
    views = [_view(v, f"{name}[{i}]", file, line) for i, v in enumerate(views)]
    if len(views) < 2:
        raise DataError(f"group with {len(views)} view(s); a group needs at least 2", file=file, line=line)
    return views


def parse_text(obj: Any, *, file: str, line: int, field: str | None = None):
    if isinstance(obj, str):
        return _view(obj, "text", file, line)
    field = field or "text"
    if not isinstance(obj, dict) or field not in obj:
        raise DataError(f"missing field {field!r}", file=file, line=line)
    return _view(obj[field], field, file, line)


def group_cestwc(rows: Iterable[tuple[int, Any]], *, file: str, field: str | None = None,
                 id_field: str = "paraphrase_set_id", on_bad=None) -> Iterator[tuple[int, list]]:
    """Group one-sentence records by ``paraphrase_set_id`` (order of first appearance).

    Yields ``(line of the group's first record, [texts])``; a set of one sentence is an error."""
    field = field or "text"
    groups: dict = {}
    for line, obj in rows:
        try:
            sid, text = _cestwc_row(obj, file, line, field, id_field)
        except DataError as e:
            _bad(on_bad, e)
            continue
        groups.setdefault(sid, (line, []))[1].append(text)
    for sid, (line, texts) in groups.items():
        if len(texts) < 2:
            _bad(on_bad, DataError(f"group with 1 view (paraphrase_set_id {sid!r}); a group needs at least 2",
                                   file=file, line=line))
            continue
        yield line, texts


def _cestwc_row(obj, file, line, field, id_field):
    if not isinstance(obj, dict):
        raise DataError(f"wrong type: record must be an object, got {type(obj).__name__}", file=file, line=line)
    for key in (id_field, field):
        if key not in obj:
            raise DataError(f"missing field {key!r}", file=file, line=line)
    sid = obj[id_field]
    if not isinstance(sid, (int, str)) or isinstance(sid, bool):
        raise DataError(f"wrong type: {id_field} must be an int or string", file=file, line=line)
    return sid, _view(obj[field], field, file, line)


def _bad(on_bad, err: DataError) -> None:
    """Raise ``err``, or hand it to ``on_bad`` (``--on-bad skip``: count it and go on)."""
    if on_bad is None:
        raise err
    on_bad(err)


# ---------------------------------------------------------------- entry point

def read_records(source: str, *, fmt: str = "auto", field: str | None = None, hf: bool = False,
                 hf_split: str = "train", hf_config: str | None = None, on_bad=None) -> Iterator[Record]:
    """All records of one input (a file, or a ``datasets`` name/path when ``hf``).

    ``on_bad(err)``: called with each bad record's :class:`DataError` instead of raising it
    (input-level problems, such as a missing file or an unknown format, always raise)."""
    if hf:
        file = f"{source}[{hf_split}]"
        rows: Iterator = iter_hf(source, split=hf_split, config=hf_config)
    else:
        if not os.path.isfile(source):
            raise DataError("input not found", file=source)
        file = source
        if fmt == "text" or (fmt == "auto" and source.endswith(".txt")):
            rows, fmt = iter_text(source), "text"
        else:
            rows = iter_jsonl(source, on_bad)
    if fmt not in ("auto",) + FORMATS:
        raise DataError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", file=file)
    if fmt == "auto":
        rows = iter(rows)
        try:
            line, first = next(rows)
        except StopIteration:
            return
        fmt = detect_format(first, file=file, line=line)
        rows = _chain([(line, first)], rows)
    kind = KIND_OF[fmt]
    if fmt == "cestwc":
        for line, texts in group_cestwc(rows, file=file, field=field, on_bad=on_bad):
            yield Record(file, line, kind, texts)
        return
    parse = {"chat": parse_chat, "group": parse_group, "text": parse_text}[fmt]
    for line, obj in rows:
        try:
            data = parse(obj, file=file, line=line, field=field)
        except DataError as e:
            _bad(on_bad, e)
            continue
        yield Record(file, line, kind, data)


def _chain(head, tail):
    yield from head
    yield from tail
