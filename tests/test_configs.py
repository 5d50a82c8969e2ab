"""configs/*.yaml load and validate, and each names the ZeRO file the benchmarks' analysis picks
(``megajepa.ds_config.choose``, docs/benchmarks.md): a paper config for its model on the
8 x 80 GB GPUs it is written for, a tiny config for one CPU process."""
import glob
import os

import pytest
import yaml

from megajepa.config import load
from megajepa.ds_config import choose
from megajepa.model import estimate_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
PAPER_GPUS, GPU_MEMORY = 8, 80 * 2**30
FINETUNED = "llama-3.2-1b"  # a fine-tune config names no preset: the paper fine-tunes Llama-3.2-1B


def test_there_are_paper_and_tiny_configs():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"nlrx_pretrain_paper.yaml", "nlrx_pretrain_tiny.yaml", "stp_text_paper.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_and_its_zero_file_is_the_analysis_choice(path):
    cfg = load(["--config", path])
    preset = (yaml.safe_load(open(path)).get("model") or {}).get("preset", FINETUNED)
    if path.endswith("_paper.yaml"):
        want, why = choose(estimate_parameters(preset=preset), PAPER_GPUS, GPU_MEMORY)
    else:
        want, why = choose(estimate_parameters(preset=preset), 1, None)
    assert cfg.train.ds_config in ("auto", want), \
        f"{os.path.basename(path)} sets {cfg.train.ds_config}; train.ds_config auto picks {want}: {why}"
