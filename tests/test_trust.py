"""Untrusted inputs run no code and touch no file (docs/trust.md).

SQL: hostile predictions (and hostile references: a data file holds them) are scored wrong
and leave the database's folder exactly as it was (listing and hashes). Checkpoints: a
pickle payload planted in a run's checkpoint does not run on resume or export; the refusal
is one line and exit 2.
"""
import hashlib
import os
import sqlite3

import pytest

from megajepa.eval.tasks import SQLTimeout, run_query, score_sql


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
