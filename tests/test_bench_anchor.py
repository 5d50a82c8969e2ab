"""scripts/bench/anchor.py (authors' finetune.py vs pretrain.py, one epoch) and the
Hugging Face folder of scripts/make_tiny_hf.py --preset, checked on CPU.

The flags we pass the authors' script must exist in its argparse (read from its source), our
pretrain.py flags must pass our parser, the HF folder must load under transformers 5 (ours)
with the Llama-3 RoPE and in the form transformers 4.x reads (theirs), our rows per step must
hold about their examples per step, and the epoch times must be read from the right lines.
The end-to-end CPU check needs the authors' code and pinned packages (opt-in, below).
"""
import json
import os
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


ba = load_script("bench/anchor")
FLAGS = ["--train_file", "--model_name", "--output_dir", "--pretrain", "--predictors", "--lbd",
         "--last_token", "--num_epochs", "--batch_size", "--grad_accum", "--max_length",
         "--learning_rate", "--finetune_seed", "--eval_steps", "--additive_mask"]


def _fake_finetune(path, flags):
    body = "\n".join(f"    parser.add_argument({f!r}, type=str)" for f in flags)
    path.write_text(f"import argparse\ndef main():\n    parser = argparse.ArgumentParser()\n{body}\n")
    return str(path)


def _chat_jsonl(path, n=60):
    from data_tools import nlrx

    with open(path, "w") as fh:
        for r in nlrx.generate_pairs(n, seed=0):
            fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
    return str(path)


def test_flags_are_read_from_the_authors_source(tmp_path):
    src = _fake_finetune(tmp_path / "finetune.py", FLAGS)
    assert ba.authors_flags(src) == set(FLAGS)
    a = ba.build_parser().parse_args(["--out", "x", "--authors", src])
    ba.check_flags(a, set(FLAGS))
    with pytest.raises(ValueError, match="does not define.*--additive_mask"):
        ba.check_flags(a, set(FLAGS) - {"--additive_mask"})


def test_dry_run_and_bad_input(tmp_path, capsys):
    src = _fake_finetune(tmp_path / "finetune.py", FLAGS)
    data = _chat_jsonl(tmp_path / "train.jsonl", 5)
    base = ["--out", str(tmp_path / "o"), "--authors", src, "--data", data, "--dry-run"]
    assert ba.main(base) == 0
    theirs, ours = capsys.readouterr().out.strip().splitlines()
    assert "--pretrain --predictors 3 --lbd 2.0 --last_token -1" in theirs
    assert "--preset llama-3.2-1b" in ours and "--data.template chat" in ours
    assert ba.main(base + ["--variants", "three,fast"]) == 2
    assert ba.main(base[:-1] + ["--data", str(tmp_path / "none.jsonl"), "--dry-run"]) == 2
    assert ba.main(base + ["--extra", "--model.liger maybe"]) == 2
    _fake_finetune(tmp_path / "finetune.py", FLAGS[:-1])
    assert ba.main(base) == 2
    assert "does not define ['--additive_mask']" in capsys.readouterr().err
    assert ba.main(base + ["--variants", "ours"]) == 0   # their script is not needed then


def test_hf_folder_loads_in_both_forms(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from data_tools.tokenizer import load_tokenizer, pred_ids
    from megajepa.model import PRESETS, llama_config, llama_parameters

    data = _chat_jsonl(tmp_path / "train.jsonl")
    hf = tmp_path / "hf"
    assert ba.make_tiny_hf().main(["--data", data, "--out", str(hf), "--preset", "llama-3.2-1b",
                                   "--k-pred", "8", "--config-only"]) == 0
    assert not list(hf.glob("*.safetensors"))
    cfg = AutoConfig.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert tok.chat_template and tok.padding_side == "right" and tok.pad_token == "<pad>"
    assert llama_parameters(cfg) == llama_parameters(llama_config("llama-3.2-1b", len(tok)))
    assert cfg.rope_parameters["rope_type"] == "llama3"
    raw = json.loads((hf / "config.json").read_text())   # what transformers 4.x reads
    assert raw["rope_theta"] == PRESETS["llama-3.2-1b"]["rope_parameters"]["rope_theta"]
    assert raw["rope_scaling"]["rope_type"] == "llama3" and raw["tie_word_embeddings"]
    tcfg = json.loads((hf / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<pred_1>" in tcfg["additional_special_tokens"]
    mega, added = load_tokenizer(str(hf))
    assert added == [] and len(pred_ids(mega)) == 8


def test_our_rows_hold_their_examples_per_step(tmp_path):
    from data_tools.preprocess import preprocess

    data = _chat_jsonl(tmp_path / "train.jsonl", 200)
    hf = str(tmp_path / "hf")
    ba.make_tiny_hf().main(["--data", data, "--out", hf, "--k-pred", "8", "--config-only"])
    store = str(tmp_path / "st")
    preprocess([data], store, tokenizer=hf, template="chat", progress=False)
    a = ba.build_parser().parse_args(["--out", "x", "--batch-size", "4", "--grad-accum", "4",
                                      "--seq-len", "256"])
    rows, steps, per_step = ba.our_batch(a, store)
    assert rows >= 1 and steps >= 1
    assert 0.6 * 16 < per_step < 1.6 * 16
    a.seq_len, a.batch_size = 256, 400
    with pytest.raises(ValueError, match="fewer than one step"):
        ba.our_batch(a, store)


def test_epoch_times_are_parsed(tmp_path):
    log = tmp_path / "three.log"
    log.write_text("{'loss': 3.1, 'epoch': 0.5}\n100%|| 62/62 {'train_runtime': 412.5, "
                   "'train_samples_per_second': 19.4, 'epoch': 1.0}\nanchor_wall_s=480.0\n")
    assert ba.parse_authors(str(log)) == dict(epoch_s=412.5, epoch=1.0)
    run = tmp_path / "ours"
    run.mkdir()
    t_last = 1_800_000_000.0
    recs = [dict(step=10, time=t_last - 5, step_time_s=2.0, peak_memory_gb=30.0, mfu=0.4),
            dict(step=15, time=t_last, step_time_s=1.0, peak_memory_gb=31.0, mfu=0.5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    import datetime
    stamp = datetime.datetime.fromtimestamp(t_last + 12.5).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    ours_log = tmp_path / "ours.log"
    ours_log.write_text(f"train: 100%|| 15/15 [00:20]{stamp} INFO saved checkpoint x/step_15\n")
    got = ba.parse_ours(str(run), str(ours_log))
    assert got["loop_s"] == pytest.approx(10 * 2.0 + 5 * 1.0)
    assert got["save_s"] == pytest.approx(12.5, abs=1e-3)
    assert got["epoch_s"] == pytest.approx(37.5, abs=1e-3)
    assert (got["steps"], got["peak_memory_gib"]) == (15, 31.0)


ANCHOR_SITE = os.environ.get("MEGAJEPA_ANCHOR_SITE")
AUTHORS = ROOT / "third_party" / "llm-jepa" / "finetune.py"


def test_dry_run_fine_tunes_a_model_folder(tmp_path, capsys):
    """--model: theirs without --pretrain, ours --init-from with their examples per step."""
    src = _fake_finetune(tmp_path / "finetune.py", FLAGS)
    data = _chat_jsonl(tmp_path / "train.jsonl", 5)
    model = tmp_path / "model"
    model.mkdir()
    base = ["--out", str(tmp_path / "o"), "--authors", src, "--data", data, "--dry-run",
            "--model", str(model), "--batch-size", "4", "--grad-accum", "2", "--last-token", "-2"]
    assert ba.main(base) == 2                                 # no config.json
    assert "no config.json" in capsys.readouterr().err
    (model / "config.json").write_text("{}")
    assert ba.main(base) == 0
    theirs, ours = capsys.readouterr().out.strip().splitlines()
    assert "--pretrain" not in theirs and "--model_name <hf>" in theirs
    assert "--last_token -2 --num_epochs 1 --batch_size 4 --grad_accum 2" in theirs
    assert f"--init-from {model} --data.micro_batch_examples 8 --train.epochs 1" in ours
    assert "--preset" not in ours


def test_their_model_folder_is_read_by_transformers_4(tmp_path):
    """A folder transformers 5 wrote, rewritten in the form their pinned 4.55 reads."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "rope_parameters":
                                                 {"rope_theta": 100000.0, "rope_type": "default"}}))
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend",
                                                           "eos_token": "<|im_end|>"}))
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "model.safetensors").write_bytes(b"weights")
    ba.their_model_folder(str(src), str(dst))
    cfg = json.loads((dst / "config.json").read_text())
    tok = json.loads((dst / "tokenizer_config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and "rope_scaling" not in cfg
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast" and tok["chat_template"] == "{{ messages }}"
    assert (dst / "model.safetensors").is_symlink() and (dst / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((src / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"


@pytest.mark.slow
@pytest.mark.skipif(not (ANCHOR_SITE and AUTHORS.exists()),
                    reason="needs scripts/bench/prepare_anchor.sh and MEGAJEPA_ANCHOR_SITE (their "
                           "pinned packages, pip install --target)")
def test_cpu_check_runs_their_code_and_ours(tmp_path):
    data = _chat_jsonl(tmp_path / "train.jsonl", 40)
    rc = ba.main(["--cpu-check", "--authors", str(AUTHORS), "--data", data, "--anchor-site",
                  ANCHOR_SITE, "--out", str(tmp_path / "o"), "--batch-size", "4", "--grad-accum",
                  "2", "--max-length", "64", "--seq-len", "512", "--log-every", "1"])
    rep = json.loads((tmp_path / "o" / "anchor.json").read_text())
    assert rc == 0, rep
    assert [r["variant"] for r in rep["runs"]] == ["three", "additive", "ours"]
    assert all(r["epoch_s"] > 0 for r in rep["runs"])
