"""scripts/bench/trainer.py (pretrain.py against the Hugging Face Trainer) at a tiny size.

The arms must compare like with like: the Trainer and pretrain.py's next-token run take the
same examples per step from the same weights, so their first losses are the same objective
(the oracle), and the Trainer's three-pass LLM-JEPA loss equals our single pass's. Timings
are only checked to exist (no timed assertions).
"""
import json

import pytest
from conftest import load_script

bt = load_script("bench/trainer")


def test_arms_parse_and_bad_arms_are_one_line():
    arms = bt.parse_arms("trainer,nt,nt_z1=nt:--train.ds_config ds_configs/zero1.json")
    assert [(a["name"], a["kind"], a["flags"]) for a in arms] == [
        ("trainer", "trainer", []), ("nt", "nt", []),
        ("nt_z1", "nt", ["--train.ds_config", "ds_configs/zero1.json"])]
    with pytest.raises(ValueError, match="kind must be one of"):
        bt.parse_arms("x=gpt:--a")
    with pytest.raises(ValueError, match="each arm once"):
        bt.parse_arms("nt,nt")


@pytest.mark.slow
def test_tiny_run_arms_agree_on_the_first_loss(tmp_path):
    from data_tools import nlrx
    from data_tools.preprocess import preprocess

    mk = load_script("make_tiny_hf")
    data = tmp_path / "train.jsonl"
    with open(data, "w") as fh:
        for r in nlrx.generate_pairs(200, seed=1, split="train"):
            fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
    assert mk.main(["--data", str(data), "--out", str(tmp_path / "hf")]) == 0
    preprocess([str(data)], str(tmp_path / "store"), tokenizer=str(tmp_path / "hf"), template="chat",
               progress=False)
    out = tmp_path / "bt"
    rc = bt.main(["--model", str(tmp_path / "hf"), "--store", str(tmp_path / "store"), "--out", str(out),
                  "--arms", "trainer,trainer_jepa,nt,jepa", "--warmup", "1", "--steps", "2", "--seq-len", "256"])
    assert rc == 0
    rep = json.loads((out / "trainer.json").read_text())
    arms = rep["summary"]["arms"]
    assert arms["trainer"]["first_loss"] == pytest.approx(arms["nt"]["first_loss"], rel=1e-5)
    assert arms["trainer_jepa"]["first_loss"] == pytest.approx(arms["jepa"]["first_loss"], rel=1e-5)
    assert arms["jepa"]["first_loss"] > arms["nt"]["first_loss"]      # the JEPA term is there
    for a in arms.values():
        assert a["ok"] and a["time"]["median"] > 0 and set(bt.PARTS) <= set(a["parts"])
    assert arms["nt"]["extra"]["ds_config"] == "ds_configs/zero0.json"
    assert "vs trainer" in (out / "trainer.md").read_text()
