"""Task metrics: pure functions from (prediction, reference) to per-example booleans.

Each ``score_<task>(prediction, reference, ...)`` returns a dict of named booleans; the
task's metrics are the means of those booleans over a dataset. ``prediction`` is the
decoded generation with special tokens skipped and surrounding whitespace stripped (as in
the LLM-JEPA authors' evaluation).

===========  ==========================================================================
task         per-example booleans
===========  ==========================================================================
nlrx         ``exact`` (pred == ref), ``startswith`` (pred.startswith(ref), the paper's
             pretraining metric), ``semantic`` (regex_equivalent; unparseable or too
             complex predictions count as wrong)
gsm8k        ``exact``, ``startswith``, ``answer``: the final answers after the last ``####``
             are equal as numbers (commas, ``$``, ``%``, a trailing period ignored)
sql          ``exact``, ``startswith``, ``execution``: both queries run on the example's
             SQLite database (read-only, sandboxed, time-limited) and return the same rows: as
             multisets, or as lists when the reference has ORDER BY; errors and timeouts
             count as wrong
classify     ``label``: the first word of the prediction equals the reference label
             (case-sensitive, trailing punctuation ignored), e.g. ``Good`` / ``Bad``
===========  ==========================================================================

``startswith`` is the LLM-JEPA authors' ``--startswith`` metric (the prediction begins with
the reference; generation may run on past it up to ``max_new_tokens``, 128 in the paper).
"""
from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Optional

from megajepa.eval.regex import RegexError, RegexTooComplexError, regex_equivalent

TASKS = ("nlrx", "gsm8k", "sql", "classify")
METRICS = {"nlrx": ("exact", "startswith", "semantic"),
           "gsm8k": ("exact", "startswith", "answer"),
           "sql": ("exact", "startswith", "execution"), "classify": ("label",)}


def match_text(prediction: str, reference: str) -> dict:
    """``exact`` and ``startswith``: the task-independent string metrics."""
    return {"exact": prediction == reference, "startswith": prediction.startswith(reference)}


# ------------------------------------------------------------------------ nlrx
def score_nlrx(prediction: str, reference: str) -> dict:
    """Exact match, starts-with, and DFA semantic equivalence of two NL-RX regexes.

    ``regex_error`` (not a metric) names why ``semantic`` is False without a comparison:
    ``"syntax"`` or ``"too_complex"`` (either regex), else None.
    """
    error = None
    try:
        semantic = prediction == reference or regex_equivalent(prediction, reference)
    except RegexTooComplexError:
        semantic, error = False, "too_complex"
    except RegexError:
        semantic, error = False, "syntax"
    return {**match_text(prediction, reference), "semantic": bool(semantic), "regex_error": error}


# ----------------------------------------------------------------------- gsm8k
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def final_answer(text: str) -> Optional[str]:
    """The text after the last ``####`` up to the end of that line, stripped (or None)."""
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().splitlines()
    return answer[0].strip() if answer else ""


_MAX_EXPONENT = 1000  # "1e99999999" would build a 10**99999999 Fraction: hours, gigabytes


def parse_number(answer: Optional[str]) -> Optional[Fraction]:
    """``'$1,234.50.'`` -> Fraction(2469, 2); None if the answer is not a single number (or
    has an exponent over ``_MAX_EXPONENT``: compared as text)."""
    if answer is None:
        return None
    s = answer.replace(",", "").replace("$", "").replace("%", "").strip().rstrip(".").strip()
    m = _NUMBER.fullmatch(s)
    if not m or (m.group(3) and abs(int(m.group(3)[1:])) > _MAX_EXPONENT):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def score_gsm8k(prediction: str, reference: str) -> dict:
    """Final-answer match: numerically when both parse as numbers, else as strings."""
    pa, ra = final_answer(prediction), final_answer(reference)
    if ra is None:  # a bare reference answer ("42") is its own final answer
        ra = reference.strip()
    pn, rn = parse_number(pa), parse_number(ra)
    if pn is not None and rn is not None:
        ok = pn == rn  # exact rational comparison: "3.0" == "3", "1,000" == "1000"
    else:
        ok = pa is not None and pa == ra
    return {**match_text(prediction, reference), "answer": bool(ok)}


# ------------------------------------------------------------------------- sql
class SQLTimeout(Exception):
    """A query ran past its time limit."""


# What a query may do: read (SELECT, column reads, recursive CTEs) and call SQLite's own
# functions. Every other authorizer action is denied: ATTACH (so also VACUUM INTO, which
# attaches its target), DETACH, PRAGMA, transactions, CREATE/DROP/ALTER (TEMP too), writes.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ,
                              sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE})
# Functions that load code or touch files: SQLite core's, and the shell's fileio ones in
# case a build registers them.
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile",
                               "edit", "lsdir", "zipfile", "sqlar_compress", "sqlar_uncompress"})
MAX_VALUE_BYTES = 1 << 24  # one string/blob (zeroblob(1e9) is an error, not a GiB)


def _authorize(action, arg1, arg2, db_name, trigger) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def run_query(db_path, query: str, timeout_s: float = 5.0, max_rows: int = 1_000_000):
    """Run ``query`` on the SQLite file ``db_path`` opened read-only; return its rows.

    The query is untrusted (a model wrote it; a data file holds the reference): it may only
    read the one database. The file is opened read-only and an authorizer denies every action
    but reading and SQLite's own functions (no ATTACH/DETACH, VACUUM [INTO], PRAGMA,
    transactions, CREATE/DROP/ALTER, writes, ``load_extension`` or file functions; table-valued
    functions such as ``json_each`` too: SQLite reports their set-up as a schema update); one
    statement only. Where Python has ``setlimit`` (3.11+), no database may be attached and a
    value longer than ``MAX_VALUE_BYTES`` is an error.
    The time limit is enforced from inside SQLite's VM (a progress handler aborts the
    statement), so a query that never ends still returns control. Raises ``SQLTimeout``,
    ``sqlite3.Error`` (syntax errors, denied actions, several statements) or ``ValueError``
    (more than ``max_rows`` rows).
    """
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           timeout=timeout_s, check_same_thread=False)
    if hasattr(conn, "setlimit"):  # Python >= 3.11; the authorizer alone denies ATTACH
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(_authorize)
    deadline = time.monotonic() + timeout_s
    expired = []

    def check() -> int:
        if time.monotonic() > deadline:
            expired.append(True)
            return 1  # non-zero aborts the running statement
        return 0

    conn.set_progress_handler(check, 1000)
    try:
        cursor = conn.execute(query)
        rows = []
        while True:
            chunk = cursor.fetchmany(10_000)
            if not chunk:
                break
            rows.extend(chunk)
            if len(rows) > max_rows:
                raise ValueError(f"query returned more than {max_rows} rows")
        return rows
    except sqlite3.OperationalError:
        if expired:
            raise SQLTimeout(f"query ran past {timeout_s}s") from None
        raise
    finally:
        conn.close()


_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def results_match(pred_rows, ref_rows, ordered: bool) -> bool:
    """Rows equal as lists (ordered) or as multisets."""
    if ordered:
        return list(pred_rows) == list(ref_rows)
    return Counter(map(tuple, pred_rows)) == Counter(map(tuple, ref_rows))


def score_sql(prediction: str, reference: str, db_path, timeout_s: float = 5.0,
              max_rows: int = 1_000_000) -> dict:
    """Execution match on ``db_path`` (both queries through :func:`run_query`'s sandbox); any
    error, denied action, timeout or too large a result of either query is wrong."""
    try:
        ref_rows = run_query(db_path, reference, timeout_s, max_rows)
        pred_rows = run_query(db_path, prediction, timeout_s, max_rows)
        ok = results_match(pred_rows, ref_rows, ordered=bool(_ORDER_BY.search(reference)))
    except (sqlite3.Error, SQLTimeout, ValueError, FileNotFoundError, OverflowError):
        ok = False
    return {**match_text(prediction, reference), "execution": bool(ok)}


_DB_ID = re.compile(r"For db_id:\[(.+?)\]")


def find_database(db_dir, record_text: str, db_id: Optional[str] = None) -> Path:
    """Locate an example's database in ``db_dir``: ``<db_id>/<db_id>.sqlite`` (Spider's
    layout) or ``<db_id>.sqlite`` / ``.db``. ``db_id`` comes from the record or from a
    ``For db_id:[name]`` tag in its prompt (the LLM-JEPA Spider format)."""
    if db_id is None:
        m = _DB_ID.search(record_text)
        if not m:
            raise ValueError("no db_id in the record and no 'For db_id:[...]' in its prompt")
        db_id = m.group(1)
    root = Path(db_dir)
    for candidate in (root / db_id / f"{db_id}.sqlite", root / f"{db_id}.sqlite",
                      root / f"{db_id}.db"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no database for db_id {db_id!r} under {root}")


# -------------------------------------------------------------------- classify
def first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].rstrip(".,;:!?") if words else ""


def score_classify(prediction: str, reference: str) -> dict:
    """First-token label accuracy: first word of the prediction == the label."""
    return {"label": first_word(prediction) == first_word(reference)}


def aggregate(rows: list, task: str) -> dict:
    """Means of the per-example booleans: {"n": N, "<metric>": fraction, ...}."""
    out = {"task": task, "n": len(rows)}
    for name in METRICS[task]:
        out[name] = sum(bool(r[name]) for r in rows) / len(rows) if rows else float("nan")
    return out
