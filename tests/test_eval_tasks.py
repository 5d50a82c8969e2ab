"""Task metrics on tiny fixtures (SQLite databases built here)."""
import sqlite3
import time

import pytest

from megajepa.eval.tasks import (SQLTimeout, aggregate, final_answer, find_database,
                                 parse_number, run_query, score_classify, score_gsm8k,
                                 score_nlrx, score_sql)


def test_nlrx_metrics():
    assert score_nlrx(".*dog.*", ".*dog.*") == {"exact": True, "startswith": True,
                                                "semantic": True, "regex_error": None}
    # the paper's starts-with: the generation begins with the reference
    assert score_nlrx(".*dog.*xyz", ".*dog.*") == {"exact": False, "startswith": True,
                                                   "semantic": False, "regex_error": None}
    assert score_nlrx("(.*dog.*)|(.*dog.*truck.*)", ".*dog.*") == {
        "exact": False, "startswith": False, "semantic": True, "regex_error": None}
    assert score_nlrx("([0-9])&(.)", "[0-9]")["semantic"]
    assert not score_nlrx("~(.*dog.*)", ".*dog.*")["semantic"]


@pytest.mark.parametrize("bad", ["((dog", "", "[a-", "~", ".*a" + "." * 14])
def test_nlrx_unparseable_or_huge_prediction_is_wrong_not_a_crash(bad):
    out = score_nlrx(bad, ".*dog.*")
    assert out["semantic"] is False
    assert out["regex_error"] == ("too_complex" if bad.startswith(".*a") else "syntax")


def test_gsm8k_final_answer():
    ref = "Natalia sold 48/2 = 24 clips in May.\n#### 1,072"
    assert final_answer(ref) == "1,072"
    assert final_answer("no marker") is None
    assert final_answer("#### 1\nstuff\n#### 72\nmore") == "72"
    assert parse_number("$1,234.50.") == parse_number("1234.5")
    assert parse_number("3.0") == parse_number("3") and parse_number("-.5") == -0.5
    assert parse_number("twelve") is None and parse_number("") is None
    for pred, ok in [("so #### 1072", True), ("#### $1,072.", True), ("#### 1072.0", True),
                     ("#### 1073", False), ("1072", False), ("####", False),
                     ("#### 1072 apples", False)]:
        assert score_gsm8k(pred, ref)["answer"] is ok, pred
    assert score_gsm8k("#### 12%", "#### 12")["answer"]
    assert score_gsm8k("x\n#### 5", "x\n#### 5") == {"exact": True, "startswith": True,
                                                      "answer": True}


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "shop" / "shop.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, price REAL);
        INSERT INTO item VALUES (1, 'apple', 1.5), (2, 'pear', 2.0), (3, 'fig', 1.5),
                                (4, 'kiwi', 3.0);
    """)
    conn.commit()
    conn.close()
    return path


HANG = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT count(*) FROM c")


def test_sql_execution_match(db):
    ref = "SELECT name FROM item WHERE price = 1.5"
    assert score_sql(ref, ref, db) == {"exact": True, "startswith": True, "execution": True}
    # order-insensitive without ORDER BY, multiset (duplicates count)
    assert score_sql("SELECT name FROM item WHERE price < 2 ORDER BY name DESC", ref,
                     db)["execution"]
    assert not score_sql("SELECT name FROM item", ref, db)["execution"]
    assert not score_sql("SELECT price FROM item WHERE price = 1.5", "SELECT DISTINCT price "
                         "FROM item WHERE price = 1.5", db)["execution"]
    # order-sensitive when the reference orders
    ordered = "SELECT name FROM item ORDER BY price, name"
    assert score_sql("SELECT name FROM item ORDER BY price ASC, name ASC", ordered,
                     db)["execution"]
    assert not score_sql("SELECT name FROM item ORDER BY name", ordered, db)["execution"]


def test_sql_errors_and_writes_are_wrong(db):
    ref = "SELECT name FROM item"
    assert not score_sql("SELEC name FROM item", ref, db)["execution"]
    assert not score_sql("SELECT nope FROM item", ref, db)["execution"]
    assert not score_sql("DELETE FROM item", ref, db)["execution"]
    assert not score_sql("SELECT 1; SELECT 2", ref, db)["execution"]
    assert len(run_query(db, ref)) == 4, "read-only: the DELETE must not have happened"
    with pytest.raises(sqlite3.Error):
        run_query(db, "DROP TABLE item")
    assert not score_sql(ref, ref, db.parent / "missing.sqlite")["execution"]


def test_sql_hanging_query_times_out(db):
    start = time.monotonic()
    with pytest.raises(SQLTimeout):
        run_query(db, HANG, timeout_s=0.3)
    assert score_sql(HANG, "SELECT 1", db, timeout_s=0.3)["execution"] is False
    assert time.monotonic() - start < 5


def test_find_database(db, tmp_path):
    assert find_database(tmp_path, "For db_id:[shop] Question: how many?") == db
    assert find_database(tmp_path, "", db_id="shop") == db
    with pytest.raises(ValueError):
        find_database(tmp_path, "no tag")
    with pytest.raises(FileNotFoundError):
        find_database(tmp_path, "", db_id="other")


def test_classify_first_token():
    assert score_classify("Good", "Good") == {"label": True}
    assert score_classify(" Good. The movie was", "Good")["label"]
    assert not score_classify("Bad", "Good")["label"]
    assert not score_classify("good", "Good")["label"]
    assert not score_classify("", "Good")["label"]
    assert not score_classify("Goodness", "Good")["label"]


def test_aggregate():
    rows = [{"label": True}, {"label": False}, {"label": True}, {"label": True}]
    assert aggregate(rows, "classify") == {"task": "classify", "n": 4, "label": 0.75}


def test_score_record_dispatch(db, tmp_path):
    from megajepa.eval.run import as_record, score_record

    rec = as_record({"messages": [
        {"role": "system", "content": "Write SQL."},
        {"role": "user", "content": "For db_id:[shop] How many items?"},
        {"role": "assistant", "content": "SELECT count(*) FROM item"}]})
    assert score_record("sql", "SELECT count(id) FROM item", rec, tmp_path)["execution"]
    assert not score_record("sql", "SELECT count(*) FROM item", {**rec, "db_id": "none"},
                            tmp_path)["execution"]
    with pytest.raises(ValueError, match="db_dir"):
        score_record("sql", "SELECT 1", rec)
    assert score_record("gsm8k", "#### 4", {"assistant": "2+2\n#### 4"})["answer"]
    assert score_record("classify", "Bad.", {"assistant": "Bad"})["label"]
    assert score_record("nlrx", "dog|dog", {"assistant": "dog"})["semantic"]
    with pytest.raises(ValueError, match="unknown task"):
        score_record("mmlu", "A", {"assistant": "A"})


def test_startswith_is_reported_for_every_generation_task(db):
    """The paper's --startswith metric: the prediction begins with the reference (the model
    may run on past it within max_new_tokens)."""
    from megajepa.eval.tasks import METRICS

    for task in ("nlrx", "gsm8k", "sql"):
        assert "startswith" in METRICS[task]
    assert score_gsm8k("x\n#### 5 and more", "x\n#### 5") == {
        "exact": False, "startswith": True, "answer": False}
    ref = "SELECT name FROM item WHERE price = 1.5"
    s = score_sql(ref + " LIMIT 5", ref, db)
    assert (s["exact"], s["startswith"], s["execution"]) == (False, True, True)
    assert not score_sql("SELECT", ref, db)["startswith"]   # a prefix of the reference is not
