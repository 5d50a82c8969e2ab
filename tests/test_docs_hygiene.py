"""What the documented commands leave behind is git-ignored, and the docs name no machine's
absolute paths (a reader has neither this checkout's location nor its data folder)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "scripts").glob("**/*.sh"))]
# --out / --run-dir values, and OUT=${OUT:-...} defaults of the recipe scripts
_OUTPUT = re.compile(r"(?:--out|--run-dir|--run_dir)[ =](\S+)|\bOUT=\$\{OUT:-([^}]+)\}")


def documented_outputs() -> set:
    """Repository-relative folders and files the documented commands write."""
    out = set()
    for doc in DOCS:
        for m in _OUTPUT.finditer(doc.read_text()):
            path = (m.group(1) or m.group(2)).strip("`'\",;)")
            path = path.split("$")[0].rstrip("-_/")  # runs/x-$SIZE -> runs/x
            if (not re.fullmatch(r"[\w.][\w./-]*", path) or path.startswith("..")
                    or path.startswith("docs/")):  # absolute, placeholders, committed figures
                continue
            out.add(path)
    return out


def _git_ok() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--git-dir"], capture_output=True).returncode == 0


def _probe(path: str) -> str:
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        if (ROOT / "/".join(parts[:i])).is_symlink():
            return "/".join(parts[:i])
    return f"{path}/x"


@pytest.mark.skipif(not _git_ok(), reason="not a git checkout")
def test_documented_outputs_are_git_ignored():
    outputs = documented_outputs()
    assert {"runs/sweep", "tok", "stores/train", "data/nlrx"} <= outputs  # the parser works
    # a path inside each output: ignored whether the output is a folder or a file (git will
    # not look beyond a symbolic link, e.g. a models/<name> linked elsewhere: probe the link)
    probes = {_probe(p): p for p in sorted(outputs)}
    res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *probes],
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    ignored = {probes[line] for line in res.stdout.splitlines()}
    assert outputs - ignored == set(), "add these to .gitignore"


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_no_absolute_machine_paths(doc):
    text = (ROOT / doc).read_text()
    found = re.findall(r"(?<![\w.~])/(?:work|tmp|home|root|scratch|shared)/\S*", text)
    assert not found, f"{doc}: use relative paths or placeholders such as DATA=path/to/..."


# A path of this machine: its checkout or shared folder (/work/...) or a user's home.
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home)/\S*")


def _repo_text_files():
    """``{path: text}`` of every file git tracks (or would: untracked, not ignored) that is text."""
    res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True)
    out = {}
    for name in sorted(set(res.stdout.decode().split("\0")) - {""}):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (figures)
        try:
            out[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return out


def test_machine_path_pattern():
    found = lambda s: _MACHINE_PATH.findall(s)  # noqa: E731
    assert found("DATA_DIR=/work/shared/data x") == ["/work/shared/data"]
    assert found('"/root/.cache/x" and `/home/me/data`') == ['/root/.cache/x"', "/home/me/data`"]
    assert not found("../shared/data/nlrx.jsonl path/to/work/x ~/home/y runs/work/z /tmp/x")


@pytest.mark.skipif(not _git_ok(), reason="not a git checkout")
def test_no_machine_paths_in_any_repository_text_file():
    """Code, scripts, configs, tests and docs take data paths as arguments or environment
    variables: nothing committed may point into this machine (``/work/...``, a home folder)."""
    files = _repo_text_files()
    assert {"README.md", "pretrain.py", "scripts/nlrx_pretrain.sh", "tests/test_docs_hygiene.py"} <= set(files)
    del files["tests/test_docs_hygiene.py"]  # spells the patterns out
    hits = [f"{name}:{n}: {m.group(0)}" for name, text in files.items()
            for n, line in enumerate(text.splitlines(), 1) for m in _MACHINE_PATH.finditer(line)]
    assert not hits, "machine paths (take them as arguments, or write path/to/...):\n" + "\n".join(hits)
