"""The anchor: one epoch of NL-RX-SYNTH with the authors' ``finetune.py --pretrain`` against
``pretrain.py`` on the same examples, the same GPU, back to back, from random init at the
llama-3.2-1b shape.

    three     their default: three forwards per batch (full, text+predictors, code), every
              sequence padded to --max-length, HF Trainer, gradient checkpointing, bf16
    additive  their --additive_mask: one forward of a doubled batch with a dense 4D mask
    ours      pretrain.py: one forward over packed rows, the BlockMask of megajepa.masking

Both read the same JSONL (the first --examples records), the same tokenizer and the same
model shape: ``scripts/make_tiny_hf.py --preset llama-3.2-1b --config-only`` writes the
Hugging Face folder (config + our SentencePiece tokenizer with a chat template) whose config
their ``--pretrain`` initializes at random; ``data_tools.preprocess --template chat`` makes our
store from the same file and tokenizer. Settings: k = 3 (their --predictors 3, our --k 3),
lambda 2, lr 8e-5, their --last_token -1 (with this chat template the user sequence ends with
the last predictor token and the code with its last token). Examples per optimizer step: their
--batch-size x --grad-accum (default 16 x 8 = 128, their 8-GPU global batch 8 x 4 x 4); ours
the packed rows that hold about as many (reported).

Epoch time = the training loop, warm-up/compilation and the end-of-epoch checkpoint included,
process start-up (imports, model init, tokenization) excluded: their Trainer's
``train_runtime``; ours the sum of pretrain.py's logged windows plus its final save (from its
log). Whole-process wall times are reported too.

The GPU machine has no internet: ``bash scripts/bench/prepare_anchor.sh`` puts their
finetune.py, the data and the wheels of their pinned stack (transformers 4.55, peft 0.17)
under the git-ignored ``third_party/``; ``bash scripts/bench/gpu.sh anchor`` runs this.

``--model <HF folder>`` fine-tunes a real model instead (their finetune.py without
``--pretrain``, loading it in bf16 as their code does; ours ``--init-from``, a store made with
its tokenizer and chat template, ``data.micro_batch_examples`` = their batch x accumulation,
one epoch). SmolLM2-135M-Instruct on the CPU, 200 pairs, one thread, both in bf16
(docs/benchmarks.md, "CPU: the authors' code beside ours"):
    OMP_NUM_THREADS=1 python scripts/bench/anchor.py --cpu-check --model models/smollm2-135m-instruct \
        --anchor-site <site> --out runs/anchor_smollm2 --examples 200 --batch-size 8 --grad-accum 1 \
        --max-length 96 --seq-len 256 --k 1 --lbd 1 --lr 1e-4 --last-token -2 --log-every 5 \
        --timeout 3000 --extra "--train.precision bf16 --train.ds_config ds_configs/zero0.json"

CPU check (tiny model, their code through scripts/bench/anchor_launch.py --cpu-check; their
packages installed with pip install --target <site> third_party/wheels/*.whl, plus httpx on a
machine without it):
    python scripts/bench/anchor.py --cpu-check --anchor-site <site> --out /tmp/anchor \
        --examples 40 --batch-size 4 --grad-accum 2 --max-length 64 --seq-len 512
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import ROOT, provenance, read_metrics, run_logged, tail, windows, write_json  # noqa: E402

VARIANTS = ("three", "additive", "ours")


def authors_flags(finetune_py: str) -> set[str]:
    """The ``--flags`` their argparse defines, read from the source (no import)."""
    tree = ast.parse(Path(finetune_py).read_text())
    return {arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")}


def authors_argv(a, variant: str, train: str, hf: str, out_dir: str) -> list[str]:
    argv = ["--train_file", train, "--model_name", hf, "--output_dir", out_dir,
            *([] if a.model else ["--pretrain"]),
            "--predictors", str(a.k), "--lbd", str(a.lbd), "--last_token", str(a.last_token),
            "--num_epochs", "1", "--batch_size", str(a.batch_size), "--grad_accum", str(a.grad_accum),
            "--max_length", str(a.max_length), "--learning_rate", str(a.lr),
            "--finetune_seed", "0", "--eval_steps", str(a.log_every)]
    return argv + (["--additive_mask"] if variant == "additive" else [])


def ours_argv(a, store: str, run_dir: str, rows: int, steps: int) -> list[str]:
    if a.model:  # fine-tuning: the same examples per step as theirs, one epoch
        batch = ["--init-from", a.model, "--data.micro_batch_examples",
                 str(a.batch_size * a.grad_accum), "--train.epochs", "1"]
    else:
        batch = ["--preset", a.preset, "--data.micro_batch_rows", str(rows), "--steps", str(steps)]
    return [*batch, "--data.train", store, "--data.template", "chat",
            "--data.seq_len", str(a.seq_len), "--k", str(a.k), "--lambda", str(a.lbd), "--lr", str(a.lr),
            "--optim.warmup_steps", "0", "--train.log_every", str(a.log_every),
            "--train.save_every", str(10 * steps), "--train.export", "false",
            "--train.final_eval", "false", "--run-dir", run_dir, *a.extra.split()]


def check_flags(a, flags: set[str]) -> None:
    """Every flag we pass their script exists in its argparse (typos fail here, not there)."""
    ours = {f for v in ("three", "additive") for f in authors_argv(a, v, "x", "x", "x")
            if f.startswith("--")}
    missing = sorted(ours - flags)
    if missing:
        raise ValueError(f"{a.authors} does not define {missing}")


# ------------------------------------------------------------------------------ set-up

def make_tiny_hf():
    """scripts/make_tiny_hf.py (scripts/ is on sys.path)."""
    import make_tiny_hf

    return make_tiny_hf


def their_model_folder(src: str, dst: str) -> str:
    """``src`` (a folder transformers 5 wrote) as their pinned transformers 4.55 reads it: the
    weights linked, the tokenizer config without 5.x's ``TokenizersBackend`` class and with the
    chat template inside, RoPE also under 4.x's keys (``rope_theta``)."""
    tiny = make_tiny_hf()
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in os.listdir(src):
        if name in ("config.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
        else:
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
    tiny._portable_tokenizer_config(dst)
    template = os.path.join(src, "chat_template.jinja")
    if os.path.isfile(template):
        path = os.path.join(dst, "tokenizer_config.json")
        cfg = json.loads(Path(path).read_text())
        cfg.setdefault("chat_template", Path(template).read_text())
        Path(path).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tiny._legacy_rope_keys(os.path.join(dst, "config.json"))
    return dst


def subset(src: str, dst: str, n: int) -> int:
    """The first ``n`` non-empty records of ``src`` (all when n = 0) into ``dst``."""
    kept = 0
    with open(src) as fh, open(dst, "w") as out:
        for line in fh:
            if line.strip() and (not n or kept < n):
                out.write(line)
                kept += 1
    if not kept:
        raise ValueError(f"--data {src}: no records")
    return kept


def our_batch(a, store: str) -> tuple[int, int, float]:
    """``(rows, steps per epoch, examples per step)``: rows of --seq-len holding about
    --batch-size x --grad-accum examples, planned by the loader itself."""
    from data_tools.store import open_store
    from data_tools.tokenizer import load_tokenizer, pred_ids
    from megajepa.loader import PackedLoader

    st = open_store(store)
    tok, _ = load_tokenizer(st.tokenizer_path)

    def plan(rows):
        return PackedLoader(st, seq_len=a.seq_len, micro_batch_rows=rows, k=a.k,
                            pred_ids=pred_ids(tok), pad_id=tok.pad_token_id, seed=0)

    if a.model:  # an examples budget: exactly their examples per step
        per = a.batch_size * a.grad_accum
        return 0, len(st) // per, float(per)
    rows_total = plan(1).steps_per_epoch
    want = a.batch_size * a.grad_accum
    rows = max(1, round(rows_total * want / len(st)))
    loader = plan(rows)
    if loader.steps_per_epoch < 1:
        raise ValueError(f"{len(st)} examples fill {rows_total} rows of {a.seq_len}: fewer than "
                         f"one step of {rows} rows; use more --examples or a smaller --seq-len")
    return rows, loader.steps_per_epoch, len(st) / loader.steps_per_epoch


# --------------------------------------------------------------------------- the runs

def run(cmd: list[str], log_path: str, env: dict, timeout: float) -> dict:
    rc, wall = run_logged(cmd, log_path, env, timeout)
    out = dict(ok=rc == 0, returncode=rc, wall_s=wall, log=log_path)
    if rc != 0:
        out["error"] = tail(log_path, 12)
    return out


def parse_authors(log_path: str) -> dict:
    text = Path(log_path).read_text(errors="replace")
    m = re.findall(r"'train_runtime': ([0-9.]+)", text)
    steps = re.findall(r"'epoch': ([0-9.]+)", text)
    return dict(epoch_s=float(m[-1]) if m else None, epoch=float(steps[-1]) if steps else None)


# logging's asctime; the progress bar may share the line, so no ^ anchor
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO saved checkpoint")


def parse_ours(run_dir: str, log_path: str) -> dict:
    recs = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    loop = sum(seconds for _, seconds, _ in windows(recs))
    logs = [log_path, os.path.join(run_dir, "train.log")]  # saves are logged to the run's train.log
    saves = sorted(s for f in logs if os.path.exists(f)
                   for s in _STAMP.findall(Path(f).read_text(errors="replace")))
    save_s = 0.0
    if saves and recs:
        t = datetime.datetime.strptime(saves[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        save_s = max(0.0, t - recs[-1]["time"])
    return dict(epoch_s=loop + save_s if recs else None, loop_s=loop, save_s=save_s,
                steps=recs[-1]["step"] if recs else 0,
                peak_memory_gib=max((r["peak_memory_gb"] for r in recs), default=None),
                mfu=recs[-1].get("mfu") if recs else None)


# ------------------------------------------------------------------------------ main

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--authors", default="third_party/llm-jepa/finetune.py")
    p.add_argument("--data", default="third_party/data/nlrx_synth_train.jsonl")
    p.add_argument("--anchor-site", default="/tmp/site_anchor",
                   help="their pinned packages (transformers 4.55, peft 0.17), first on their PYTHONPATH")
    p.add_argument("--variants", default="three,additive,ours")
    p.add_argument("--examples", type=int, default=0, help="first N records (0: all)")
    p.add_argument("--preset", default="llama-3.2-1b")
    p.add_argument("--model", default=None,
                   help="a Hugging Face folder to fine-tune instead of a random --preset model: "
                        "their finetune.py without --pretrain, ours --init-from, the same "
                        "examples per step (data.micro_batch_examples)")
    p.add_argument("--last-token", type=int, default=-1,
                   help="theirs: --last_token (-2 reads SmolLM2's <|im_end|>; its template "
                        "ends a turn with <|im_end|> and a newline)")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--lbd", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=8e-5)
    p.add_argument("--batch-size", type=int, default=16, help="theirs: per-device batch")
    p.add_argument("--grad-accum", type=int, default=8, help="theirs: accumulation steps")
    p.add_argument("--max-length", type=int, default=512, help="theirs: every sequence padded to it")
    p.add_argument("--seq-len", type=int, default=4096, help="ours: packed row length")
    p.add_argument("--vocab-size", type=int, default=1000, help="tokenizer (soft limit)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--extra", default="", help="more pretrain.py flags, one string")
    p.add_argument("--timeout", type=float, default=560, help="seconds per run")
    p.add_argument("--cpu-check", action="store_true",
                   help="tiny model on CPU (their code via scripts/bench/anchor_launch.py --cpu-check)")
    p.add_argument("--dry-run", action="store_true", help="check flags and print the commands")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from megajepa import config as config_mod

    variants = a.variants.split(",")
    out = Path(a.out).resolve()
    if a.cpu_check:
        a.preset = "tiny"
    if a.model:
        a.model = os.path.abspath(a.model)
    try:
        if a.model and not os.path.isfile(os.path.join(a.model, "config.json")):
            raise ValueError(f"--model {a.model}: no config.json (a Hugging Face model folder)")
        if not variants or set(variants) - set(VARIANTS):
            raise ValueError(f"--variants {a.variants!r}: a subset of {','.join(VARIANTS)}")
        if not os.path.isfile(a.data):
            raise ValueError(f"--data {a.data}: no such file (scripts/bench/prepare_anchor.sh)")
        if {"three", "additive"} & set(variants):
            if not os.path.isfile(a.authors):
                raise ValueError(f"--authors {a.authors}: no such file (scripts/bench/prepare_anchor.sh)")
            check_flags(a, authors_flags(a.authors))
        config_mod.load(ours_argv(a, str(out / "store"), str(out / "ours"), 1, 1))
    except SystemExit as e:
        return 2 if e.code else 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch = [sys.executable, str(ROOT / "scripts" / "bench" / "anchor_launch.py"), os.path.abspath(a.authors)]
    if a.cpu_check:
        launch.append("--cpu-check")
    if a.dry_run:
        print(" ".join(launch + authors_argv(a, "three", "<train.jsonl>", "<hf>", "<out>")))
        print("python pretrain.py " + " ".join(ours_argv(a, "<store>", "<run>", 0, 0)))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    train = str(out / "train.jsonl")
    n = subset(a.data, train, a.examples)
    hf, store = a.model or str(out / "hf"), str(out / "store")
    if not a.model:
        make_tiny_hf().main(["--data", train, "--out", hf, "--k-pred", "8", "--vocab-size",
                             str(a.vocab_size), "--config-only"]
                            + ([] if a.preset == "tiny" else ["--preset", a.preset]))
    their_hf = their_model_folder(hf, str(out / "hf_4x")) if a.model else hf
    from data_tools.preprocess import preprocess

    preprocess([train], store, tokenizer=hf, template="chat", overwrite=True, progress=False)
    rows, steps, per_step = our_batch(a, store)
    env_theirs = dict(os.environ, PYTHONPATH=a.anchor_site, PYTHONUNBUFFERED="1",
                      TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env_ours = dict(os.environ, PYTHONUNBUFFERED="1")
    results = []
    for v in variants:
        print(f"== {v}", flush=True)
        log = str(out / f"{v}.log")
        load_before = os.getloadavg()[0]
        if v == "ours":
            run_dir = str(out / "ours")
            info = run([sys.executable, str(ROOT / "pretrain.py"),
                        *ours_argv(a, store, run_dir, rows, steps)], log, env_ours, a.timeout)
            info.update(parse_ours(run_dir, log), examples_per_step=per_step,
                        rows=rows, seq_len=a.seq_len)
            shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
        else:
            their_out = str(out / f"{v}_output")
            cmd = launch + authors_argv(a, v, train, their_hf, their_out)
            info = run(cmd, log, env_theirs, a.timeout)
            info.update(parse_authors(log), examples_per_step=a.batch_size * a.grad_accum,
                        max_length=a.max_length)
            shutil.rmtree(their_out, ignore_errors=True)  # ~12 GB of checkpoint at 1B
        results.append(dict(variant=v, examples=n, load_1min=[load_before, os.getloadavg()[0]], **info))
        print(json.dumps(results[-1]), flush=True)
    rep = dict(**provenance(__file__, argv),
               model=os.path.basename(a.model) if a.model else None, preset=None if a.model else a.preset,
               threads=os.environ.get("OMP_NUM_THREADS"), cores=os.cpu_count(),
               examples=n, k=a.k, lbd=a.lbd, runs=results)
    stem = out / "anchor"
    if "ours" not in variants:  # a split run (scripts/bench/gpu.sh anchor three): its own file
        stem = out / f"anchor_{'_'.join(variants)}"
    write_json(stem.with_suffix(".json"), rep)
    print(json.dumps(rep, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
