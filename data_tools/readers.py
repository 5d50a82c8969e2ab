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
           (``--field``/``--text-field`` names another field)
=========  ==============================================================  ======  =====================

A view may also be a list of ints (already tokenized).  ``line`` is the 1-based physical
line of a JSONL/text file (``.gz`` read through gzip), or the 1-based row of a ``datasets``
split (``file`` is then ``name[split]``).  Anything malformed -- invalid UTF-8, bad JSON (with
its column), a missing or mistyped field, an empty view -- raises :class:`DataError` at that
file and line, or with ``on_bad`` is handed to it and skipped.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from . import hub
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

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")


def iter_lines(path: str, on_bad=None) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every physical line (split at ``\n`` only, newline removed, a last
    line without one kept), decoded as UTF-8; ``.gz`` files are read through gzip.

    An undecodable line is a :class:`DataError` at its line and character column (or is
    handed to ``on_bad``); a file that cannot be opened is one too."""
    try:
        f = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=path) from None
    n = 0
    with f:
        try:
            for n, raw in enumerate(f, 1):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    col = len(raw[:e.start].decode("utf-8")) + 1  # the prefix decoded fine
                    bad_record(on_bad, DataError(f"invalid UTF-8: byte 0x{raw[e.start]:02x} at column {col}",
                                           file=path, line=n))
                    continue
                yield n, (text[1:] if n == 1 and text.startswith("\ufeff") else text)  # a BOM is no content
        except (OSError, EOFError) as e:  # truncated or corrupt .gz
            raise DataError(f"cannot read: {e}", file=path, line=n + 1) from None


def iter_jsonl(path: str, on_bad=None) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` for every non-blank line; malformed JSON is a :class:`DataError`
    naming the line and the column of the fault."""
    for n, text in iter_lines(path, on_bad):
        if not text.strip():
            continue
        try:
            yield n, json.loads(text)
        except json.JSONDecodeError as e:
            at = f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"
            bad_record(on_bad, DataError(f"malformed JSON: {at}", file=path, line=n))
        except RecursionError:
            bad_record(on_bad, DataError("malformed JSON: nested too deeply", file=path, line=n))


def iter_text(path: str, on_bad=None) -> Iterator[tuple[int, str]]:
    """``(line, text)`` for every non-blank line of a plain-text file (one document per line)."""
    for n, text in iter_lines(path, on_bad):
        if text.strip():
            yield n, text


def iter_hf(name: str, *, split: str, config: str | None = None,
            streaming: bool = False) -> Iterator[tuple[int, Any]]:
    """``(row, record)`` of a ``datasets`` split: a hub name (``org/name``, looked up once first),
    a folder written by ``save_to_disk``, a folder of data files, or one data file."""
    ds = load_hf(name, split=split, config=config, streaming=streaming)
    n = 0
    rows = iter(ds)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - e.g. undecodable text met while iterating
            _find_bad_line(name)
            raise DataError(f"cannot read: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
                            file=f"{name}[{split}]", line=n + 1) from None
        n += 1
        yield n, row


def _find_bad_line(name: str) -> None:
    """``datasets`` names no line; for a local JSONL file our reader finds the first bad one."""
    if os.path.isfile(name) and name.endswith((".jsonl", ".jsonl.gz")):
        for _ in iter_jsonl(name):
            pass


_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
                ".arrow": "arrow"}


def load_hf(name: str, *, split: str, config: str | None = None, streaming: bool = False):
    """The ``datasets`` split ``name[split]`` (see :func:`iter_hf`); any failure is a :class:`DataError`."""
    import datasets

    where = f"{name}[{split}]"
    try:
        if os.path.isdir(name) and any(os.path.exists(os.path.join(name, f))
                                       for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"no split {split!r} (splits: {', '.join(ds)}); pass --hf-split", file=name)
                ds = ds[split]
            return ds
        if os.path.isfile(name):
            suffix = os.path.splitext(name[:-3] if name.endswith(".gz") else name)[1].lower()
            if suffix not in _HF_BUILDERS:
                raise DataError(f"--hf reads a folder or a {'/'.join(_HF_BUILDERS)} file, not {suffix or 'this'}",
                                file=name)
            return datasets.load_dataset(_HF_BUILDERS[suffix], data_files={split: name}, split=split,
                                         streaming=streaming)
        if not os.path.exists(name):
            if not hub.is_repo_id(name):
                raise DataError(f"no such file or directory: {name} (a Hugging Face hub dataset is named org/name)")
            hub.check_repo(name, repo_type="dataset", what="dataset")
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - report any loading failure as bad input
        _find_bad_line(name)
        raise DataError(f"cannot load dataset: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        file=where) from None


# ---------------------------------------------------------------- format detection

def detect_format(first: Any, *, file: str, line: int, field: str | None = None) -> str:
    """Guess the format from the first record (``field``: the type of that field decides)."""
    if field and isinstance(first, dict) and field in first:
        v = first[field]
        if isinstance(v, str):
            return "text"
        if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
            return "chat"
        if isinstance(v, list):
            return "group"
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
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:  # a JSON escape such as "\ud800" decodes to a lone surrogate
            raise DataError(f"invalid text: {what} holds an unpaired surrogate \\u{ord(v[e.start]):04x} "
                            f"at character {e.start + 1}", file=file, line=line) from None
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
    """A document's text (or token ids); ``None`` for a blank one, which is skipped like a
    blank line of a ``.txt`` file (text corpora such as wikitext have many)."""
    if not isinstance(obj, str):
        field = field or "text"
        if not isinstance(obj, dict) or field not in obj:
            raise DataError(f"missing field {field!r}", file=file, line=line)
        obj = obj[field]
    if isinstance(obj, str) and not obj.strip():
        return None
    return _view(obj, field or "text", file, line)


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
            bad_record(on_bad, e)
            continue
        groups.setdefault(sid, (line, []))[1].append(text)
    for sid, (line, texts) in groups.items():
        if len(texts) < 2:
            bad_record(on_bad, DataError(f"group with 1 view (paraphrase_set_id {sid!r}); a group needs at least 2",
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


def bad_record(on_bad, err: DataError) -> None:
    """Raise ``err``, or hand it to ``on_bad`` (``--on-bad skip``: count it and go on)."""
    err.skippable = True
    if on_bad is None:
        raise err
    on_bad(err)


def skip_counter(on_bad: str, dropped):
    """The ``on_bad`` callback of ``--on-bad error|skip``: None (raise) for error; for skip,
    one that counts each bad record in the Counter ``dropped`` by the kind of fault."""
    return (lambda e: dropped.update([e.what.split(":")[0]])) if on_bad == "skip" else None


# ---------------------------------------------------------------- entry point

def read_records(source: str, *, fmt: str = "auto", field: str | None = None, hf: bool = False,
                 hf_split: str = "train", hf_config: str | None = None, hf_streaming: bool = False,
                 on_bad=None) -> Iterator[Record]:
    """All records of one input (a file, or a ``datasets`` name/path when ``hf``).

    A ``.txt`` file (or any file but ``.json``/``.jsonl`` with ``fmt="text"``) is plain text,
    one document per line; other files are JSONL.  ``on_bad(err)``: called with each bad
    record's :class:`DataError` instead of raising it (input-level problems, such as a
    missing file or an unknown format, always raise)."""
    if fmt not in ("auto",) + FORMATS:
        raise DataError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", file=source)
    if hf:
        file = f"{source}[{hf_split}]"
        rows: Iterator = iter_hf(source, split=hf_split, config=hf_config, streaming=hf_streaming)
    else:
        if os.path.isdir(source):
            raise DataError("is a directory; pass --hf to read a datasets folder", file=source)
        if not os.path.exists(source):
            raise DataError("no such file", file=source)
        file = source
        name = source.lower()
        if (fmt == "auto" and name.endswith(TEXT_SUFFIXES)) or (fmt == "text" and not name.endswith(JSON_SUFFIXES)):
            rows, fmt = iter_text(source, on_bad), "text"
        else:
            rows = iter_jsonl(source, on_bad)
    if fmt == "auto":
        rows = iter(rows)
        try:
            line, first = next(rows)
        except StopIteration:
            return
        fmt = detect_format(first, file=file, line=line, field=field)
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
            bad_record(on_bad, e)
            continue
        if data is not None:
            yield Record(file, line, kind, data)


def _chain(head, tail):
    yield from head
    yield from tail
