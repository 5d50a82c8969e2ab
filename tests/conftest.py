"""Shared fixtures: tiny fp32 models and small mixed batches (no downloads, CPU only)."""
import importlib.util
import os
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


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
def sdpa_model():
    return tiny_model("sdpa")
