"""Untrusted inputs run no code and touch no file (docs/trust.md).

SQL: hostile predictions (and hostile references: a data file holds them) are scored wrong
and leave the database's folder exactly as it was (listing and hashes). Checkpoints: a
pickle payload planted in a run's checkpoint does not run on resume or export; the refusal
is one line and exit 2.
"""
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch

from data_tools.errors import DataError
from megajepa import checkpoint
from megajepa.eval.tasks import SQLTimeout, run_query, score_sql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------- sql
def folder_state(root) -> dict:
    """{relative path: sha256} of every file under ``root`` (directories listed too)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A database in its own folder, which is also the working directory (relative paths in a
    query land there too); returns (db path, folder)."""
    folder = tmp_path / "dbs"
    folder.mkdir()
    db = folder / "shop.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price REAL, shop INTEGER);
        CREATE TABLE shop(id INTEGER PRIMARY KEY, city TEXT);
        CREATE VIEW cheap AS SELECT name FROM item WHERE price < 2;
        CREATE INDEX item_name ON item(name);
        INSERT INTO shop VALUES (1, 'Paris'), (2, 'Lyon');
        INSERT INTO item VALUES (1, 'apple', 1.5, 1), (2, 'pear', 2.0, 1), (3, 'fig', 1.5, 2),
                                (4, 'kiwi', 3.0, 2);
    """)
    conn.commit()
    conn.close()
    monkeypatch.chdir(folder)
    return db, folder


def hostile(folder) -> list:
    f = str(folder)
    return [
        f"ATTACH DATABASE '{f}/x.db' AS p", "ATTACH 'rel.db' AS p", "DETACH DATABASE main",
        f"VACUUM INTO '{f}/copy.db'", "VACUUM INTO 'copy2.db'", "VACUUM",
        "PRAGMA journal_mode=WAL", "PRAGMA user_version=7", "PRAGMA writable_schema=ON",
        "PRAGMA table_info(item)", "SELECT * FROM pragma_table_info('item')",
        f"SELECT load_extension('{f}/evil')", f"SELECT writefile('{f}/w.txt', 'x')",
        f"SELECT readfile('{f}/shop.sqlite')", "SELECT fts3_tokenizer('simple')",
        "SELECT name FROM item; ATTACH 'two.db' AS t", "SELECT name FROM item; DELETE FROM item",
        "DELETE FROM item", "INSERT INTO item VALUES (9, 'x', 1, 1)", "DROP TABLE item",
        "CREATE TABLE z(a)", "CREATE TEMP TABLE z AS SELECT name FROM item", "BEGIN IMMEDIATE",
        "ANALYZE", "REINDEX", "CREATE VIRTUAL TABLE v USING fts5(a)",
    ]


# A cross join of the CTE with itself: 10^8 rows, far past max_rows, reached in seconds.
HUGE = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 10000) "
        "SELECT a.i, b.i FROM n a, n b")
RUNAWAY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT count(*) FROM c")
REF = "SELECT name FROM item"


def test_hostile_queries_are_wrong_and_touch_no_file(sandbox):
    db, folder = sandbox
    before = folder_state(folder)
    for query in hostile(folder):
        with pytest.raises(sqlite3.Error):  # denied, not merely a different result
            run_query(db, query)
        # generated and reference queries go through the same sandbox
        assert score_sql(query, REF, db)["execution"] is False, query
        assert score_sql(REF, query, db)["execution"] is False, query
        assert score_sql(query, query, db)["execution"] is False, query
        assert folder_state(folder) == before, query
    assert sorted(os.listdir(folder)) == ["shop.sqlite"]


def test_huge_and_runaway_results_are_wrong(sandbox):
    db, folder = sandbox
    before = folder_state(folder)
    with pytest.raises(ValueError, match="more than 1000 rows"):
        run_query(db, HUGE, max_rows=1000)
    assert score_sql(HUGE, HUGE, db, max_rows=1000)["execution"] is False
    with pytest.raises(sqlite3.Error, match="too big"):  # one 1 GB value: refused, not built
        run_query(db, "SELECT zeroblob(1000000000)")
    assert score_sql("SELECT length(zeroblob(1000000000))", "SELECT 1000000000",
                     db)["execution"] is False
    with pytest.raises(SQLTimeout):
        run_query(db, RUNAWAY, timeout_s=0.3)
    assert score_sql(RUNAWAY, "SELECT 1", db, timeout_s=0.3)["execution"] is False
    assert score_sql("SELECT 1", RUNAWAY, db, timeout_s=0.3)["execution"] is False
    assert folder_state(folder) == before


@pytest.mark.parametrize("query", [
    "SELECT name FROM item",
    "SELECT i.name, s.city FROM item AS i JOIN shop AS s ON i.shop = s.id WHERE s.city LIKE 'P%'",
    "SELECT shop, count(*), avg(price), max(price) FROM item GROUP BY shop HAVING count(*) > 1",
    "SELECT name FROM item WHERE price = (SELECT min(price) FROM item) ORDER BY name",
    "SELECT name, row_number() OVER (PARTITION BY shop ORDER BY price DESC) FROM item",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 3) SELECT i FROM n",
    "SELECT CASE WHEN price > 2 THEN upper(name) ELSE substr(name, 1, 2) END FROM item",
    "SELECT name FROM cheap EXCEPT SELECT name FROM item WHERE name = 'fig'",
    "SELECT strftime('%Y', '2024-05-01'), round(1.26, 1), coalesce(NULL, 'a'), length('abc')",
    "SELECT name FROM sqlite_master WHERE type = 'table'",
])
def test_reading_queries_still_run(sandbox, query):
    """The sandbox denies by default: the SQL that evaluation references use still runs."""
    db, _ = sandbox
    assert run_query(db, query)
    assert score_sql(query, query, db)["execution"] is True


def test_a_huge_exponent_in_a_gsm8k_answer_is_text_not_a_giant_number():
    """``#### 1e99999999999`` as a Fraction is 10**99999999999: it would never finish."""
    from megajepa.eval.tasks import parse_number, score_gsm8k

    assert parse_number("1e99999999999") is None and parse_number("2.5e3") == 2500
    assert score_gsm8k("#### 1e99999999999", "#### 5")["answer"] is False
    assert score_gsm8k("#### 1e99999999999", "#### 1e99999999999")["answer"] is True


# ----------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run dir with one checkpoint: 2 steps of the tiny model on a small NL-RX store, ZeRO-1
    (model states, and a ZeRO shard that DeepSpeed unpickles in full)."""
    from data_tools import nlrx
    from data_tools.preprocess import preprocess
    from data_tools.tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("trust")
    rows = nlrx.generate_pairs(100, seed=1, split="train")
    with open(d / "train.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
    train_sentencepiece([r["description"] for r in rows] + [r["regex"] for r in rows],
                        str(d / "tok"), vocab_size=200, k=2)
    preprocess([str(d / "train.jsonl")], str(d / "store"), tokenizer=str(d / "tok"),
               progress=False)
    run_dir = d / "run"
    p = subprocess.run([sys.executable, "pretrain.py", "--data.train", str(d / "store"),
                        "--steps", "2", "--train.save_every", "2", "--run-dir", str(run_dir),
                        "--train.export", "false", "--train.final_eval", "false",
                        "--data.seq_len", "128", "--data.micro_batch_rows", "4", "--k", "2",
                        "--train.ds_config", os.path.join("ds_configs", "zero1.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir


class Payload:
    """Unpickled, it makes the directory ``marker`` (``os.mkdir``: any interpreter has it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(run_dir, dest, name: str, marker) -> str:
    """A copy of ``run_dir`` whose checkpoint file ``name`` also pickles a :class:`Payload`;
    returns the copy's tag dir. The payload is live: a full unpickle runs it."""
    shutil.copytree(run_dir, dest)
    root = os.path.join(dest, "checkpoints")
    tag_dir = os.path.join(root, checkpoint.find_latest(root))
    path = os.path.join(tag_dir, name)
    state = torch.load(path, weights_only=False)  # our own file, written just now
    torch.save({**state, "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert os.path.isdir(marker), "the planted payload did not run on a full unpickle"
    os.rmdir(marker)
    return tag_dir


def test_genuine_checkpoint_verifies(trained):
    """What our save writes passes (client state, DeepSpeed's model and ZeRO states)."""
    root = os.path.join(trained, "checkpoints")
    tag_dir = os.path.join(root, checkpoint.find_latest(root))
    assert {"client_rank0.pt", "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt"} <= set(os.listdir(tag_dir))
    checkpoint.verify(tag_dir)
    assert checkpoint.torch_load(os.path.join(tag_dir, "client_rank0.pt"))["step"] == 2


@pytest.mark.parametrize("name", ["client_rank0.pt", "mp_rank_00_model_states.pt",
                                  "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_planted_payload_is_refused_unrun(trained, tmp_path, name):
    marker = tmp_path / "PWNED"
    tag_dir = plant(trained, tmp_path / "run", name, marker)
    with pytest.raises(DataError, match=r"unpickles posix\.mkdir") as e:
        checkpoint.verify(tag_dir)
    assert os.path.join(tag_dir, name) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError):
        checkpoint.torch_load(os.path.join(tag_dir, name))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["extra.pt", "notes.txt"])
def test_a_file_our_save_does_not_write_is_refused(trained, tmp_path, name):
    shutil.copytree(trained, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    tag_dir = root / checkpoint.find_latest(str(root))
    (tag_dir / name).write_bytes(b"x")
    with pytest.raises(DataError, match="not a file megajepa's checkpoint save writes"):
        checkpoint.verify(str(tag_dir))


def test_resume_and_export_refuse_a_planted_checkpoint(trained, tmp_path):
    """End to end: ``--resume auto`` in a run dir someone sent, and the export of it, exit 2
    with one line naming the file; the payload never runs and nothing is written."""
    marker = tmp_path / "PWNED"
    name = "zero_pp_rank_0_mp_rank_00_optim_states.pt"  # DeepSpeed would unpickle it in full
    run_dir = tmp_path / "run"
    tag_dir = plant(trained, run_dir, name, marker)
    before = folder_state(run_dir)
    p = subprocess.run([sys.executable, "pretrain.py", "--data.train", str(trained.parent / "store"),
                        "--steps", "4", "--run-dir", str(run_dir), "--resume", "auto",
                        "--train.export", "false", "--train.final_eval", "false",
                        "--data.seq_len", "128", "--data.micro_batch_rows", "4", "--k", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith(f"error: {os.path.join(tag_dir, name)}: refused: ")
    assert "posix.mkdir" in lines[0]
    out = tmp_path / "hf"
    e = subprocess.run([sys.executable, "-m", "megajepa.export", str(run_dir), str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = e.stderr.strip().splitlines()
    assert e.returncode == 2 and len(lines) == 1 and name in lines[0], e.stderr[-2000:]
    assert not marker.exists()
    assert folder_state(run_dir) == before and not out.exists()
