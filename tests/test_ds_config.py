"""train.ds_config=auto: the ZeRO file per model size, world size and GPU memory, and the
explicit files still passing through (megajepa/ds_config.py)."""
import pytest

from megajepa import ds_config
from megajepa.config import Config
from megajepa.ds_config import choose, offloads_optimizer, resolve, zero_stage

GIB = 2**30
SIZES = {"1b": 1.236e9, "3b": 3.213e9, "8b": 8.030e9}


@pytest.mark.parametrize("size,gpus,mem_gib,want", [
    ("1b", 1, 80, "zero0"),          # 19.8 GB of states: one rank has nothing to partition
    ("3b", 1, 80, "zero0"),          # 51 GB: still fits, with 29 GB for activations
    ("8b", 1, 80, "zero3_offload"),  # 128 GB: only host memory helps on one GPU
    ("8b", 1, 141, "zero3_offload"), # an H200 neither
    ("8b", 8, 80, "zero1"),          # 4 + 12/8 bytes/param = 44 GB
    ("8b", 8, 24, "zero3"),          # zero1 44 GB, zero2 30 GB > 16.8; zero3 16 GB fits
    ("8b", 2, 80, "zero3_offload"),
    ("3b", 1, 40, "zero3_offload"),  # an A100-40GB
])
def test_auto_picks_the_cheapest_stage_that_fits(size, gpus, mem_gib, want):
    path, why = choose(int(SIZES[size]), gpus, mem_gib * GIB)
    assert path == f"ds_configs/{want}.json", why


def test_auto_on_cpu_is_zero0_for_one_process_else_zero1():
    """One CPU process: ZeRO-0 (ZeRO-1 partitions nothing there and its flat step is slower);
    zero1 when on_nonfinite=skip needs a ZeRO optimizer, and for several ranks."""
    assert choose(int(SIZES["8b"]), 1, None)[0] == "ds_configs/zero0.json"
    assert choose(int(SIZES["8b"]), 1, None, skip_nonfinite=True)[0] == "ds_configs/zero1.json"
    assert choose(int(SIZES["8b"]), 2, None)[0] == "ds_configs/zero1.json"
    assert choose(int(SIZES["8b"]), 1, 80 * GIB, skip_nonfinite=True)[0] == "ds_configs/zero3_offload.json"


def test_resolve_auto_with_skip_on_one_cpu_process_is_a_zero_optimizer(monkeypatch):
    monkeypatch.setattr(ds_config, "gpu_memory_bytes", lambda: None)
    cfg = Config()
    cfg.model.preset, cfg.train.on_nonfinite = "tiny", "skip"
    assert zero_stage(resolve(cfg, 1, bf16=False, skip_nonfinite=True)) == 1


def test_resolve_auto_with_skip_on_one_gpu_is_a_zero_optimizer(monkeypatch):
    monkeypatch.setattr(ds_config, "gpu_memory_bytes", lambda: 80 * GIB)
    cfg = Config()
    cfg.model.preset, cfg.train.on_nonfinite = "llama-3.2-1b", "skip"
    assert zero_stage(resolve(cfg, 1, bf16=True, skip_nonfinite=True)) == 1
    cfg.train.on_nonfinite = "stop"
    assert zero_stage(resolve(cfg, 1, bf16=True)) == 0


def test_budget_boundary():
    """A stage is picked exactly when its states fit in STATE_BUDGET of the memory."""
    mem = 80 * GIB
    params = int(ds_config.STATE_BUDGET * mem / 16)           # ZeRO-0/1 on one GPU: 16 bytes/param
    assert choose(params, 1, mem)[0] == "ds_configs/zero0.json"
    assert choose(params, 1, mem, skip_nonfinite=True)[0] == "ds_configs/zero1.json"
    assert choose(params + 1000, 1, mem)[0] == "ds_configs/zero3_offload.json"
    assert choose(params + 1000, 1, mem, skip_nonfinite=True)[0] == "ds_configs/zero3_offload.json"


@pytest.mark.parametrize("preset,gpus,mem,stage,offload", [
    ("tiny", 1, None, 0, False),
    ("tiny", 2, None, 1, False),
    ("llama-3.2-1b", 1, 80 * GIB, 0, False),
    ("llama-3.2-1b", 2, 80 * GIB, 1, False),
    ("llama-3.1-8b", 1, 80 * GIB, 3, True),
    ("llama-3.1-8b", 16, 24 * GIB, 3, False),
])
def test_resolve_auto_loads_the_chosen_file(monkeypatch, preset, gpus, mem, stage, offload):
    monkeypatch.setattr(ds_config, "gpu_memory_bytes", lambda: mem)
    cfg = Config()
    assert cfg.train.ds_config == "auto"
    cfg.model.preset = preset
    ds = resolve(cfg, gpus, bf16=mem is not None)
    assert (zero_stage(ds), offloads_optimizer(ds)) == (stage, offload)
    assert ds["train_batch_size"] == cfg.data.micro_batch_rows * gpus


def test_explicit_file_is_used_as_given(monkeypatch):
    monkeypatch.setattr(ds_config, "gpu_memory_bytes", lambda: 80 * GIB)
    cfg = Config()
    cfg.train.ds_config = "ds_configs/zero3.json"
    cfg.model.preset = "llama-3.2-1b"                # auto would say zero0
    assert zero_stage(resolve(cfg, 1, bf16=True)) == 3
    cfg.train.ds_config = "ds_configs/nothing.json"
    with pytest.raises(ValueError, match="nothing.json.*no such file"):
        resolve(cfg, 1, bf16=True)


def test_auto_reads_the_size_of_an_init_from_checkpoint(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8).save_pretrained(tmp_path)
    cfg = Config()
    cfg.model.init_from = str(tmp_path)
    assert ds_config.auto_path(cfg, 1, 80 * GIB)[0] == "ds_configs/zero3_offload.json"
    assert ds_config.auto_path(cfg, 8, 80 * GIB)[0] == "ds_configs/zero1.json"


def test_cli_prints_the_choice(capsys):
    assert ds_config.main(["--preset", "llama-3.1-8b", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ds_configs/zero1.json") and "zero3.json" in out
    with pytest.raises(SystemExit) as e:
        ds_config.main(["--gpus", "0"])
    assert e.value.code == 2
