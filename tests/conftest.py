"""Shared fixtures: tiny fp32 models and small mixed batches (no downloads, CPU only)."""
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # run Triton kernels on CPU in tests

import pytest

from megajepa.layout import Example

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 120
PRED_IDS = [110, 111, 112, 113]
PAD = 0
# the DeepSpeed launcher of the environment the tests run in (a bare `deepspeed` on PATH may
# be another environment's, or none, when the venv is not activated)
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner"]


def free_port() -> int:
    """A TCP port free now, for a launcher's ``--master_port`` (a fixed one clashes with
    another suite's rendezvous on the same machine)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (scripts are not a package); ``name`` may
    start with a subfolder (``"bench/trainer"``: module ``bench_trainer``)."""
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def nvidia_compiler_available() -> bool:
    """Whether triton's NVIDIA backend imports (ahead-of-time compiles need no GPU)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any failure means no ahead-of-time check here
        return False


def compile_without_interpreter(source: str) -> None:
    """Run ``source`` in a fresh process without TRITON_INTERPRET (triton cannot mix the
    interpreter and the compiler in one process), from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    subprocess.run([sys.executable, "-c", source], check=True, env=env, cwd=ROOT)


def tiny_model(attn="sdpa", seed=0):
    from megajepa.model import build_model
    return build_model(preset="tiny", vocab_size=VOCAB, seed=seed, attn_implementation=attn)


def random_examples(n, seed=0, max_len=9):
    """A mix of pair, group and lm examples with random tokens (ids 1..99)."""
    g = torch.Generator().manual_seed(seed)
    out = []

    def view():
        m = int(torch.randint(2, max_len + 1, (1,), generator=g))
        return torch.randint(1, 100, (m,), generator=g).tolist()

    for i in range(n):
        kind = ("pair", "group", "lm", "pair")[i % 4]
        if kind == "pair":
            out.append(Example("pair", [view(), view()]))
        elif kind == "group":
            out.append(Example("group", [view() for _ in range(2 + i % 3)]))
        else:
            out.append(Example("lm", [view()]))
    return out


@pytest.fixture(scope="session")
def nlrx_data(tmp_path_factory):
    """What the end-to-end training tests share (tests/test_train.py, test_training_curve.py,
    test_first_hour.py): 400 generated NL-RX train pairs as chat JSONL (``train_jsonl``), 40
    test pairs (``test_jsonl``, beside it), a 256-piece SentencePiece tokenizer trained on the
    train pairs (``tokenizer``) and their store (``store``); no downloads. Read-only."""
    import json
    from types import SimpleNamespace

    from data_tools import nlrx
    from data_tools.preprocess import preprocess
    from data_tools.tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("nlrx_data")
    rows = nlrx.generate_pairs(400, seed=1, split="train")
    for name, recs in (("train.jsonl", rows), ("test.jsonl", nlrx.generate_pairs(40, seed=1, split="test"))):
        with open(d / name, "w") as fh:
            for r in recs:
                fh.write(json.dumps(nlrx.chat_record(r["description"], r["regex"])) + "\n")
    train_sentencepiece([r[f] for r in rows for f in ("description", "regex")], str(d / "tok"),
                        vocab_size=256, k=4)
    preprocess([str(d / "train.jsonl")], str(d / "store"), tokenizer=str(d / "tok"), progress=False)
    return SimpleNamespace(train_jsonl=str(d / "train.jsonl"), test_jsonl=str(d / "test.jsonl"),
                           tokenizer=str(d / "tok"), store=str(d / "store"))


@pytest.fixture(scope="session")
def sdpa_model():
    return tiny_model("sdpa")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A 200-piece SentencePiece tokenizer (k = 2 predictor tokens) trained on generated
    NL-RX pairs: a folder ``load_tokenizer`` and ``AutoTokenizer`` read."""
    from data_tools import nlrx
    from data_tools.tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("tok")
    texts = [r[f] for r in nlrx.generate_pairs(200, seed=3) for f in ("description", "regex")]
    train_sentencepiece(texts, str(d / "tok"), vocab_size=200, k=2)
    return str(d / "tok")
