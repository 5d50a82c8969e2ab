"""Plain-text corpora (issue 11 item 3): .txt / JSONL text field / datasets -> an lm store the
loader packs; long documents split into row-sized pieces without losing or repeating a token;
train_tokenizer on text; build_store (raw records -> store, for pretrain's --data.train)."""
import json
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools import templates
from data_tools.errors import DataError
from data_tools.preprocess import preprocess, split_document
from data_tools.store import open_store

WORDS = "the a quick brown fox jumps over lazy dog and then runs far away into woods while birds sing".split()


def corpus(n=30, seed=0, max_words=90):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, max_words))) for _ in range(n)]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A small corpus as .txt, JSONL with a ``body`` field, and a tokenizer trained on the .txt."""
    from data_tools.train_tokenizer import train

    d = tmp_path_factory.mktemp("text")
    docs = corpus()
    (d / "c.txt").write_text("\n".join(docs[:10]) + "\n\n" + "\n".join(docs[10:]) + "\n")  # a blank line too
    (d / "c.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(docs)))
    s = train([str(d / "c.txt")], str(d / "tok"), vocab_size=80, k=2, progress=False)
    return dict(dir=d, docs=docs, tok=str(d / "tok"), tokenizer=s["tokenizer"], strings=s["strings"])


def all_views(store):
    return [store.views(i)[0] for i in range(len(store))]


def test_train_tokenizer_on_a_text_corpus(text):
    tok = text["tokenizer"]
    assert text["strings"] == len(text["docs"])
    assert tok.decode(tok.encode(text["docs"][0], add_special_tokens=False)) == text["docs"][0]


def test_txt_and_jsonl_text_field_give_the_same_lm_store(text, tmp_path):
    a = preprocess([str(text["dir"] / "c.txt")], str(tmp_path / "a"), tokenizer=text["tok"], progress=False)
    b = preprocess([str(text["dir"] / "c.jsonl")], str(tmp_path / "b"), tokenizer=text["tok"], field="body",
                   progress=False)
    sa, sb = open_store(str(tmp_path / "a")), open_store(str(tmp_path / "b"))
    assert sa.kind == sb.kind == "lm" and a["examples"] == b["examples"] == len(text["docs"])
    want = [templates.lm_view(text["tokenizer"], d) for d in text["docs"]]
    assert all_views(sa) == all_views(sb) == want


@pytest.mark.parametrize("how", ["save_to_disk", "dataset_dict", "json_file"])
def test_hf_text_datasets(text, tmp_path, how):
    import datasets

    rows = {"body": text["docs"], "label": list(range(len(text["docs"])))}
    if how == "save_to_disk":
        datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
        src, split = str(tmp_path / "ds"), "train"
    elif how == "dataset_dict":
        datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
        src, split = str(tmp_path / "ds"), "validation"
    else:
        src, split = str(text["dir"] / "c.jsonl"), "train"
    s = preprocess([src], str(tmp_path / "st"), tokenizer=text["tok"], hf=True, hf_split=split, field="body",
                   progress=False)
    st_ = open_store(str(tmp_path / "st"))
    assert s["records"] == len(text["docs"]) and st_.kind == "lm"
    assert all_views(st_) == [templates.lm_view(text["tokenizer"], d) for d in text["docs"]]
    assert st_.manifest["source"]["hf_split"] == split


def test_a_missing_split_is_named(text, tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b"]})}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds: no split 'test' \(splits: train\); pass --hf-split"):
        preprocess([str(tmp_path / "ds")], str(tmp_path / "st"), tokenizer=text["tok"], hf=True, hf_split="test",
                   progress=False)


def test_long_documents_split_into_row_sized_pieces_that_the_loader_packs(text, tmp_path):
    from megajepa.loader import PackedLoader

    n = 24
    s = preprocess([str(text["dir"] / "c.txt")], str(tmp_path / "st"), tokenizer=text["tok"], max_doc_tokens=n,
                   progress=False)
    store = open_store(str(tmp_path / "st"))
    whole = [templates.lm_view(text["tokenizer"], d) for d in text["docs"]]
    long = [v for v in whole if len(v) > n]
    assert long and s["split"] == {"documents": len(long), "pieces": sum(-(-len(v) // n) for v in long)}
    assert store.manifest["counts"]["split"] == s["split"] and store.manifest["source"]["max_doc_tokens"] == n
    views = all_views(store)
    assert max(map(len, views)) <= n and len(views) == len(whole) - len(long) + s["split"]["pieces"]
    rebuilt, i = [], 0  # pieces of one document follow each other, in order
    for v in whole:
        got = []
        while len(got) < len(v):
            got += views[i]
            i += 1
        rebuilt.append(got)
    assert rebuilt == whole and i == len(views)
    # the loader packs every piece (none too long) and its rows hold each store token exactly once
    loader = PackedLoader(store, seq_len=n, micro_batch_rows=1, k=0, pred_ids=[], pad_id=0, seed=0)
    plan = loader.plan(0)
    assert plan.stats["dropped_too_long"] == 0 and plan.stats["tail_rows"] == 0
    it = iter(loader)
    rows = [next(it) for _ in range(plan.steps)]
    real = np.concatenate([b.input_ids[b.doc_ids >= 0].numpy() for b in rows])
    assert sorted(real.tolist()) == sorted(np.asarray(store.tokens).tolist())


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 300), max_tokens=st.integers(2, 64))
def test_split_document_is_a_partition(length, max_tokens):
    view = list(range(length))
    parts = split_document(view, max_tokens)
    assert [t for p in parts for t in p] == view
    assert len(parts) == -(-length // max_tokens) and all(0 < len(p) <= max_tokens for p in parts)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # near-equal: no one-token tail


def test_max_doc_tokens_is_for_text_only(text, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a dog"},
                                             {"role": "assistant", "content": "dog"}]}) + "\n")
    with pytest.raises(DataError, match="--max-doc-tokens splits plain-text .* this input holds pair examples"):
        preprocess([str(path)], str(tmp_path / "st"), tokenizer=text["tok"], max_doc_tokens=8, progress=False)
    assert os.listdir(tmp_path) == ["pairs.jsonl"]


def test_gzipped_text(text, tmp_path):
    import gzip

    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("\n".join(text["docs"][:5]) + "\n")
    preprocess([str(tmp_path / "c.txt.gz")], str(tmp_path / "st"), tokenizer=text["tok"], progress=False)
    assert all_views(open_store(str(tmp_path / "st"))) == [templates.lm_view(text["tokenizer"], d)
                                                          for d in text["docs"][:5]]


# ---------------------------------------------------------------- build_store

def test_build_store_trains_a_tokenizer_and_reuses_the_result(text, tmp_path):
    from data_tools.build import build_store

    src = str(text["dir"] / "c.jsonl")
    path, what = build_store(src, str(tmp_path / "run" / "data"), vocab_size=80, k=2, field="body",
                             max_doc_tokens=32)
    store = open_store(path)
    assert path == str(tmp_path / "run" / "data" / "store") and store.kind == "lm"
    assert what.startswith(f"preprocessed {src} into {path}: {len(text['docs'])} records -> {len(store)} lm examples")
    assert "SentencePiece tokenizer trained on it" in what and "long documents split" in what
    assert sorted(os.listdir(tmp_path / "run" / "data")) == ["build.json", "store", "tokenizer"]
    assert store.pred_ids == [5, 6] and max(store.view_lengths) <= 32
    path2, what2 = build_store(src, str(tmp_path / "run" / "data"), vocab_size=80, k=2, field="body",
                               max_doc_tokens=32)
    assert path2 == path and what2.startswith("reusing the store")
    _, what3 = build_store(src, str(tmp_path / "run" / "data"), vocab_size=80, k=2, field="body")  # options changed
    assert what3.startswith("preprocessed") and max(open_store(path).view_lengths) > 32


def test_build_store_with_a_given_tokenizer_and_bad_input(text, tmp_path):
    from data_tools.build import build_store

    path, what = build_store([str(text["dir"] / "c.txt")], str(tmp_path / "a"), tokenizer=text["tok"])
    assert what.endswith(f"tokenizer {text['tok']}") and sorted(os.listdir(tmp_path / "a")) == ["build.json", "store"]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "br\xffoken"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid UTF-8: byte 0xff at column 13"):
        build_store(str(bad), str(tmp_path / "b"), vocab_size=80)
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        build_store(str(tmp_path / "missing.jsonl"), str(tmp_path / "c"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_blank_documents_are_skipped_like_blank_lines(text, tmp_path):
    from data_tools.readers import read_records

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["first doc", "", "  ", "last doc"]))
    assert [(r.line, r.data) for r in read_records(str(path))] == [(1, "first doc"), (4, "last doc")]
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": []}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:2: empty view"):
        list(read_records(str(path)))


def test_generate_writes_a_text_corpus(tmp_path):
    from data_tools import generate
    from data_tools.readers import read_records

    generate.main(["--out", str(tmp_path), "--train", "20", "--test", "5", "--formats", "text,groups"])
    assert sorted(os.listdir(tmp_path)) == ["groups_test.jsonl", "groups_train.jsonl", "text_test.txt",
                                            "text_train.txt"]
    docs = [r.data for r in read_records(str(tmp_path / "text_train.txt"))]
    groups = [json.loads(line) for line in open(tmp_path / "groups_train.jsonl")]
    assert len(docs) == 20 and all(r.kind == "lm" for r in read_records(str(tmp_path / "text_test.txt")))
    assert docs == [generate.text_document(g) for g in groups]
    assert all(d.endswith(f"As a regular expression: {g['regex']}") for d, g in zip(docs, groups))


def test_build_store_splits_only_text(text, tmp_path):
    from data_tools.build import build_store

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"messages": [{"role": "user", "content": d},
                                                      {"role": "assistant", "content": "x"}]}) + "\n"
                             for d in text["docs"]))
    path, what = build_store(str(pairs), str(tmp_path / "p"), tokenizer=text["tok"], max_doc_tokens=16)
    store = open_store(path)
    assert store.kind == "pair" and len(store) == len(text["docs"]) and max(store.view_lengths) > 16
    assert "long documents split" not in what
    # a given tokenizer gets the run's k predictor tokens too (jepa.k > the default 8)
    path, _ = build_store(str(pairs), str(tmp_path / "p12"), tokenizer=text["tok"], k=12)
    assert len(open_store(path).manifest["pred_ids"]) == 12


@pytest.mark.parametrize("fault", [b'{"text": "fine"}\n{"text": "br\xffoken"}\n', b'{"text": "a"}\n{"text": "b",}\n'])
def test_a_bad_local_jsonl_through_datasets_names_its_line(text, tmp_path, fault):
    from data_tools.readers import read_records

    path = tmp_path / "c.jsonl"
    path.write_bytes(fault)
    want = "invalid UTF-8: byte 0xff at column 13" if b"\xff" in fault else "malformed JSON: .* at column 14"
    with pytest.raises(DataError, match=f"c.jsonl:2: {want}"):
        list(read_records(str(path), hf=True))
