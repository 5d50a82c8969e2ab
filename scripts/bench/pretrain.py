"""pretrain.py end to end on one GPU: MFU, tokens/s and peak memory per preset from its own
metrics.jsonl, and the single-pass / next-token time per example on the same examples.

Runs of ``pretrain.py`` on one synthetic store (below), same rows per preset:

    single   LLM-JEPA, one pass over packed rows (--lambda 1, k = 3), every preset
    lm       next-token only (--lambda 0: the packer leaves out the JEPA segments), for the
             --lm-presets (default llama-3.2-1b) or a lone preset

Each run trains ``--steps`` steps and logs every ``--log-every``; the windows after
``--warmup`` steps (compilation, allocator warm-up) give the figures, weighted by their
wall time (pretrain.py's ``tflops`` x ``step_time_s`` per window):

    MFU            sum(FLOPs) / sum(time) / device peak   useful FLOPs only (megajepa.metrics)
    single / lm    time per example on the same examples: tokens_per_s(lm) / tokens_per_s(single)
                   x design bound (each run's time per token, times the tokens its layout gives
                   the store's examples); samples_per_s(lm) / samples_per_s(single) is printed
                   beside it, over whatever examples each run's windows held
    design bound   sum(|T| + 2|C| + k) / sum(|T| + |C|) over the store's examples

Data: a store of ``pair`` examples with uniformly random token ids (text 40-400 tokens, code
20-200, the instruction-data shape of scripts/bench/throughput.py) and a word-level
tokenizer of ``--vocab`` ids (default 128,256: the Llama-3 vocabulary, so the presets have
their published sizes). Random ids cost the model exactly what real text of those lengths
costs. Once the last logged step is in metrics.jsonl the run is stopped: the final
checkpoint (45 GB at 3B) is not part of the measurement.

GPU (one call, scripts/bench/gpu.sh pretrain):
    python scripts/bench/pretrain.py --out $OUT/pretrain
CPU check at a tiny size (seconds; what tests/test_bench_pretrain.py runs):
    python scripts/bench/pretrain.py --presets tiny --seq-len 256 --rows tiny=2 --steps 6 \
        --warmup 2 --log-every 2 --vocab 300 --examples 300 --out /tmp/bp
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the bench package
from bench.harness import (ROOT, markdown_table, provenance, read_metrics, tail,  # noqa: E402
                           windows, write_report)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<sep>"]
K_PRED = 8
# Rows x grad_accum per preset at seq 4096 on an 80 GB GPU (ZeRO-1: 16 bytes/param of states).
DEFAULT_ROWS = {"llama-3.2-1b": "4x1", "llama-3.2-3b": "1x4", "llama-3.1-8b": "1x4"}


# ------------------------------------------------------------------------------ data

def word_tokenizer(vocab: int):
    """A word-level tokenizer ``w<i>`` with megajepa's specials: ids 0..4, <pred_1..8> 5..12."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from data_tools.tokenizer import pred_tokens

    names = SPECIALS + pred_tokens(K_PRED)
    if vocab <= len(names) + 16:
        raise ValueError(f"--vocab {vocab} is too small (at least {len(names) + 17})")
    table = {w: i for i, w in enumerate(names + [f"w{i}" for i in range(len(names), vocab)])}
    tk = Tokenizer(models.WordLevel(table, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=names[4:])


def make_store(path: str, *, examples: int, vocab: int, text_len=(40, 400), code_len=(20, 200),
               seed: int = 0) -> str:
    """``examples`` pair examples ``[<s> ids <sep>] [ids </s>]`` with random ids."""
    from data_tools.store import StoreWriter
    from data_tools.tokenizer import pred_ids, special_ids

    tok = word_tokenizer(vocab)
    first = len(SPECIALS) + K_PRED
    rng = np.random.default_rng(seed)
    with StoreWriter(path, kind="pair", vocab_size=vocab, overwrite=True) as w:
        for _ in range(examples):
            t, c = rng.integers(text_len[0], text_len[1] + 1), rng.integers(code_len[0], code_len[1] + 1)
            w.add([[2] + rng.integers(first, vocab, t - 2).tolist() + [4],
                   rng.integers(first, vocab, c - 1).tolist() + [3]])
        w.commit(dict(source=dict(generator="scripts/bench/pretrain.py", seed=seed,
                                  text_len=list(text_len), code_len=list(code_len)),
                      tokenizer=dict(source="word-level", vocab_size=len(tok)),
                      pred_ids=pred_ids(tok), special_ids=special_ids(tok)), tokenizer=tok)
    return path


def design_bound(store_path: str, k: int) -> dict:
    """Tokens of the single pass over next-token tokens, for the pair examples of a store."""
    from data_tools.store import open_store

    st = open_store(store_path)
    lengths = st.view_lengths.reshape(-1, 2).astype(np.float64)  # pair: [text, code]
    t, c = lengths[:, 0].sum(), lengths[:, 1].sum()
    return dict(examples=len(st), mean_text=t / len(st), mean_code=c / len(st), k=k,
                bound=(t + 2 * c + k * len(st)) / (t + c))


# --------------------------------------------------------------------------- the runs

def pretrain_argv(a, preset: str, variant: str, store: str, run_dir: str) -> list[str]:
    rows, accum = a.rows[preset]
    return ["--preset", preset, "--data.train", store, "--data.seq_len", str(a.seq_len),
            "--data.micro_batch_rows", str(rows), "--optim.grad_accum", str(accum),
            "--steps", str(a.steps), "--k", str(a.k), "--lambda", "0" if variant == "lm" else "1",
            "--train.log_every", str(a.log_every), "--train.save_every", str(10 * a.steps),
            "--train.export", "false", "--train.final_eval", "false", "--run-dir", run_dir,
            *a.extra.split()]


def run_pretrain(argv: list[str], run_dir: str, final_step: int, timeout: float) -> dict:
    """Run pretrain.py; stop it once ``final_step`` is logged (the measurement is done)."""
    os.makedirs(run_dir, exist_ok=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    log_path = os.path.join(run_dir, "stdout.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), *argv], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        stopped = False
        while proc.poll() is None:
            if time.time() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return dict(ok=False, error=f"timeout after {timeout:.0f} s", log=log_path,
                            wall_s=time.time() - t0)
            if any(r["step"] >= final_step for r in read_metrics(metrics)):
                os.killpg(proc.pid, signal.SIGKILL)  # skip the final checkpoint
                proc.wait()
                stopped = True
                break
            time.sleep(1.0)
    wall = time.time() - t0
    done = stopped or proc.returncode == 0
    out = dict(ok=done, wall_s=wall, log=log_path, returncode=proc.returncode)
    if not done:
        out["error"] = tail(log_path)
    return out


def summarize(records: list[dict], warmup: int) -> dict:
    """Figures of the logged windows after ``warmup`` steps, weighted by wall time."""
    win = windows(records, warmup)
    if not win:
        raise ValueError(f"no logged window after {warmup} warm-up steps")
    time_s = sum(t for _, t, _ in win)
    steps = sum(s for s, _, _ in win)

    def weighted(key):
        vals = [(r.get(key), t) for _, t, r in win]
        if any(v is None for v, _ in vals):
            return None
        return sum(v * t for v, t in vals) / time_s

    tflops = weighted("tflops")
    mfu = weighted("mfu")
    return dict(steps=steps, first_step=win[0][2]["step"] - win[0][0] + 1, time_s=time_s,
                step_time_s=time_s / steps, tokens_per_s=weighted("tokens_per_s"),
                samples_per_s=weighted("samples_per_s"), tflops=tflops, mfu=mfu,
                peak_memory_gib=max(r["peak_memory_gb"] for _, _, r in win),
                packing_efficiency=weighted("packing_efficiency"))


# ------------------------------------------------------------------------------ main

def parse_rows(text: str, presets: list[str]) -> dict:
    """``preset=ROWSxACCUM,...`` (x1 may be left out) over the per-preset defaults."""
    spec = {p: DEFAULT_ROWS.get(p, "4x1") for p in presets}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in spec or not value:
            raise ValueError(f"--rows {item!r}: expected PRESET=ROWS[xACCUM] for one of {presets}")
        spec[name] = value
    out = {}
    for p, value in spec.items():
        rows, _, accum = value.partition("x")
        if not rows.isdigit() or not (accum or "1").isdigit() or int(rows) < 1 or int(accum or 1) < 1:
            raise ValueError(f"--rows {p}={value}: expected ROWS[xACCUM], positive integers")
        out[p] = (int(rows), int(accum or 1))
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the store, runs and pretrain.{md,json}")
    p.add_argument("--presets", default="llama-3.2-1b,llama-3.2-3b")
    p.add_argument("--variants", default="single,lm", help="single (LLM-JEPA) and/or lm (next-token)")
    p.add_argument("--lm-presets", default="llama-3.2-1b",
                   help="presets that also run the lm variant (the ratio); the others run single")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rows", default="", help="PRESET=ROWSxACCUM overrides of "
                   + ", ".join(f"{k}={v}" for k, v in DEFAULT_ROWS.items()))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the figures")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--examples", type=int, default=0, help="store size (0: enough for every run)")
    p.add_argument("--text-len", default="40,400")
    p.add_argument("--code-len", default="20,200")
    p.add_argument("--extra", default="", help="more pretrain.py flags for every run, one string")
    p.add_argument("--timeout", type=float, default=420, help="seconds per run")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every run's flags (megajepa.config.load) and print them; no training")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from megajepa import config as config_mod

    presets, variants = a.presets.split(","), a.variants.split(",")
    try:
        if set(variants) - {"single", "lm"} or not variants:
            raise ValueError(f"--variants {a.variants!r}: single and/or lm")
        if a.steps - a.warmup < a.log_every or a.warmup < 0:
            raise ValueError(f"--steps {a.steps} leaves no logged window after --warmup {a.warmup}")
        a.rows = parse_rows(a.rows, presets)
        text_len = tuple(int(x) for x in a.text_len.split(","))
        code_len = tuple(int(x) for x in a.code_len.split(","))
        out = Path(a.out)
        lm_presets = set(a.lm_presets.split(","))
        runs = [(p, v, str(out / "runs" / f"{p}_{v}")) for p in presets for v in variants
                if v != "lm" or p in lm_presets or len(presets) == 1]
        for p, v, d in runs:  # every command's flags, checked before any work
            config_mod.load(pretrain_argv(a, p, v, str(out / "store"), d))
    except SystemExit as e:  # argparse of pretrain.py's flags: its message is printed
        return 2 if e.code else 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        for p, v, d in runs:
            print("python pretrain.py " + " ".join(pretrain_argv(a, p, v, str(out / "store"), d)))
        return 0
    need = max(r * g for r, g in a.rows.values()) * a.steps * a.seq_len
    per_example = (sum(text_len) + 2 * sum(code_len)) / 2 + a.k
    n = a.examples or int(1.3 * need / per_example) + 100
    out.mkdir(parents=True, exist_ok=True)
    store = make_store(str(out / "store"), examples=n, vocab=a.vocab, text_len=text_len,
                       code_len=code_len)
    bound = design_bound(store, a.k)
    results = []
    for p, v, d in runs:
        print(f"== {p} {v}", flush=True)
        info = run_pretrain(pretrain_argv(a, p, v, store, d), d, a.steps, a.timeout)
        recs = read_metrics(os.path.join(d, "metrics.jsonl"))
        if info["ok"] and recs:
            info.update(summarize(recs, a.warmup))
        results.append(dict(preset=p, variant=v, rows=a.rows[p], **info))
        print(json.dumps(results[-1]), flush=True)
    report = dict(**provenance(__file__, argv), seq_len=a.seq_len, k=a.k, vocab=a.vocab,
                  store=dict(examples=n, text_len=text_len, code_len=code_len),
                  design=bound, runs=results)
    report["ratios"], report["ratios_windows"] = ratios(results, bound["bound"])
    md = markdown(report)
    write_report(out / "pretrain.md", md, report)
    print(md)
    return 0 if all(r["ok"] for r in results) else 1


def ratios(results: list[dict], bound: float) -> tuple[dict, dict]:
    """Single pass / next-token time per example per preset: ``(same examples, windows)``.

    Same examples: the time per token of each run times the tokens each layout gives the whole
    store, i.e. (tokens/s lm / tokens/s single) x bound. The windows' own examples per second
    are not the same examples: best fit places a window's largest examples first, so the rows a
    run's logged steps hold depend on where its steps fall in the window (at llama-3.2-1b on an
    H100, 2026-12-06: 316 tokens per example in the next-token run's windows against 330 over
    the store, and 150 to 340 examples per 5-step window)."""
    by = {(r["preset"], r["variant"]): r for r in results}
    same, windows = {}, {}
    for (p, v), r in by.items():
        lm = by.get((p, "lm"))
        if v != "single" or not lm:
            continue
        if r.get("tokens_per_s") and lm.get("tokens_per_s"):
            same[p] = lm["tokens_per_s"] / r["tokens_per_s"] * bound
        if r.get("samples_per_s") and lm.get("samples_per_s"):
            windows[p] = lm["samples_per_s"] / r["samples_per_s"]
    return same, windows


def markdown(rep: dict) -> str:
    d = rep["design"]
    lines = [f"device: {rep['device']}; {rep['date']}; seq_len {rep['seq_len']}; k {rep['k']}; "
             f"vocab {rep['vocab']}; store: {rep['store']['examples']} random pair examples, "
             f"mean |T| {d['mean_text']:.1f}, |C| {d['mean_code']:.1f}",
             f"command: `{rep['command']}`", ""]
    head = ["preset", "variant", "rows x accum", "steps measured", "step s", "tokens/s", "samples/s",
            "TFLOP/s", "MFU", "peak GiB", "wall s"]
    rows = []
    for r in rep["runs"]:
        run = [r["preset"], r["variant"], f"{r['rows'][0]}x{r['rows'][1]}"]
        if not r.get("steps"):
            why = r["error"].strip().splitlines()[-1] if r.get("error") else "no metrics"
            rows.append(run + [f"failed: {why}"] + [""] * (len(head) - 4))
            continue
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.3f}"
        rows.append(run + [f"{r['steps']} (from {r['first_step']})", f"{r['step_time_s']:.3f}",
                           f"{r['tokens_per_s']:,.0f}", f"{r['samples_per_s']:,.1f}", f"{r['tflops']:.1f}",
                           mfu, f"{r['peak_memory_gib']:.2f}", f"{r['wall_s']:.0f}"])
    lines += [markdown_table(head, rows), "", f"design bound (|T| + 2|C| + k) / (|T| + |C|) = {d['bound']:.3f}"]
    for p, q in rep["ratios"].items():
        w = rep.get("ratios_windows", {}).get(p)
        lines.append(f"{p}: single pass / next-token time per example = {q:.3f} on the same examples "
                     f"(time per token x the store's tokens; {'within' if q <= d['bound'] else 'above'} "
                     f"the bound)" + (f"; {w:.3f} over the examples the logged windows held" if w else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
