"""Every command block of README.md and docs/*.md runs as written, at a tiny size.

**What runs.** Fenced blocks labelled ``bash``/``sh``/``shell``/``console``, unlabelled or
indented blocks whose first line is a command (``python ...``, ``deepspeed ...``,
``scripts/x.sh``, ``VAR=... cmd``, ``tensorboard``, ``touch``, ...) and ``python`` blocks.
Other blocks (YAML, error messages, diagrams, file trees) are text. A document's blocks run
in order in one bash session (``set -eo pipefail``; variables and the working directory carry
over, as in a terminal), in a fresh copy of the repository (its tracked and untracked,
not ignored files), so later commands see the earlier ones' outputs and nothing is written
into the checkout (recipes ``cd`` to the copy's root; ``docs/results/*.png`` are the copy's).
A python block runs as ``python3 <file>`` in that session.

**Markers.** An HTML comment on the last non-blank line before a block, with a reason:

* ``<!-- docs-test: skip — <reason> -->``: not run here (a GPU, the network, two nodes, a
  synopsis with placeholders, the test suite itself).
* ``<!-- docs-test: slow — <reason> -->``: this block and the rest of the document run only in
  the document's slow test (``-m slow``), in their own fresh copy (they may not use the
  outputs of the blocks before the marker).

An unmarked command block is run: a new block that cannot run here fails the test until it is
marked. A marker without a reason, or not followed by a block, fails the extraction test. The
flags of every documented command, skipped blocks included, are checked against the tools'
``--help`` by tests/test_cli_help.py.

**Tiny size.** The commands run unchanged except for these overrides:

* ``sitecustomize`` on ``PYTHONPATH`` reaches every Python process the commands start
  (recipes, sweep cells, launched ranks):
  ``pretrain.py``'s config (``megajepa.config.load`` wrapped, after validation):
  ``train.steps`` <= 4 (an epoch budget becomes 4 steps), ``log_every`` <= 2, ``save_every``
  and ``eval_every`` <= the steps, ``warmup_steps`` <= the steps, ``stop_at`` < the steps;
  random-init presets -> ``tiny``; ``train.precision`` auto (fp32 on CPU); ``seq_len`` <= 256,
  ``micro_batch_rows`` <= 4, ``micro_batch_examples`` <= 16, ``grad_accum`` <= 2; the embedded
  dataset 300 pairs (20 held out); the final eval <= 8 pairs of <= 24 new tokens;
  ``data.vocab_size`` <= 1000; a CPU-offload ZeRO file -> ``zero3.json``. Tool flags:
  ``data_tools.generate --train`` <= 300, ``--test`` <= 40; ``megajepa.eval``,
  ``collapse_check.py``, ``table1.py`` ``--limit`` <= 8 and ``--max-new-tokens`` <= 24;
  ``megajepa.analyze --limit`` <= 40; ``sweep.py``, ``table1.py``, ``stp_experiments.py``:
  the first value of ``--ks``, ``--lambdas``, ``--seeds`` (one cell per arm);
  ``stp_experiments.py --steps`` <= 4, ``--jobs 1``.
* In the session: ``python``/``python3`` are this interpreter; ``... -m pip install``,
  ``... -m venv`` and ``. <venv>/bin/activate`` are not run (the test runs in the installed
  environment, as CI installs it with README's command);
  ``deepspeed [launcher flags] x.py ...`` runs ``python x.py ...`` (one process on the CPU; a
  ``--hostfile`` launch must be marked); ``tensorboard --logdir D`` checks that D holds event
  files instead of serving them. The data variables the docs set, ``DATA=`` and
  ``DATA_DIR=``, point at a generated folder (``nlrx_synth_{train,test}.jsonl`` from the
  embedded generator, a made-up ``rotten_tomatoes_{train,test}.jsonl``); ``NGPUS=`` is 0;
  ``EVAL_LIMIT=8``; CUDA hidden, ``OMP_NUM_THREADS=1``, Hugging Face offline.

Cost, measured on the shared 2-core CPU (load average ~5, 2026-11-27): the sessions run two at a
time; the quick tests take 3 minutes (README's session, the longest, 2.6), all of them 8
(docs/training.md's four recipes 6 minutes and docs/results.md's experiments 4, side by side).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
PY_LANGS = {"python", "py", "python3"}
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:python3?|deepspeed|torchrun|bash|sh|"
                     r"scripts/\S+|\./\S+|tensorboard|export|cd|mkdir|cat|touch|pip3?|git|curl|"
                     r"wget|cp|mv|rm|ls)(?:\s|$)")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(\w+)\s*(?:[—–:-]+\s*)?(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
TIMEOUT_S = 2400
WORKERS = 2


@dataclasses.dataclass
class Block:
    doc: str              # repository-relative path
    line: int             # 1-based line of the block's first body line
    lang: str             # fence language, "" (unlabelled fence) or "indented"
    text: str
    mark: str = ""        # "", "skip" or "slow"
    reason: str = ""

    @property
    def kind(self) -> str | None:
        """``shell``, ``python`` or None (text, not run)."""
        if self.lang in SHELL_LANGS:
            return "shell"
        if self.lang in PY_LANGS:
            return "python"
        if self.lang in ("", "indented"):
            first = next((s.strip() for s in self.text.splitlines()
                          if s.strip() and not s.strip().startswith("#")), "")
            return "shell" if COMMAND.match(first) else None
        return None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(doc: str, text: str) -> tuple[list[Block], list[str]]:
    """The document's code blocks with their markers, and the problems of its markers."""
    lines = text.split("\n")
    blocks, problems, used = [], [], set()

    def marker_before(start: int) -> tuple[str, str]:
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        m = MARKER.match(lines[j]) if j >= 0 else None
        if not m:
            return "", ""
        used.add(j)
        mark, reason = m.group(1), m.group(2).strip()
        if mark not in ("skip", "slow"):
            problems.append(f"{doc}:{j + 1}: unknown docs-test marker {mark!r} (skip or slow)")
        if not re.search(r"\w{3,}", reason):
            problems.append(f"{doc}:{j + 1}: a docs-test {mark} marker needs a reason")
        return mark, reason

    i, prev_blank = 0, True
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
            j = i + 1
            while j < len(lines) and not (lines[j].strip().startswith(fence)
                                          and set(lines[j].strip()) == {fence[0]}):
                j += 1
            body = "\n".join(ln[indent:] if ln[:indent].isspace() else ln.lstrip()
                             for ln in lines[i + 1:j])
            mark, reason = marker_before(i)
            blocks.append(Block(doc, i + 2, lang, body, mark, reason))
            i, prev_blank = j + 1, False
            continue
        if prev_blank and re.match(r"^( {4}|\t)\S", lines[i]):
            j, body = i, []
            while j < len(lines) and (lines[j].startswith(("    ", "\t")) or not lines[j].strip()):
                body.append(lines[j][4:] if lines[j].startswith("    ") else lines[j].lstrip("\t"))
                j += 1
            while body and not body[-1].strip():
                body.pop()
            mark, reason = marker_before(i)
            blocks.append(Block(doc, i + 1, "indented", "\n".join(body), mark, reason))
            i, prev_blank = j, True
            continue
        prev_blank = not lines[i].strip()
        i += 1
    for j, line in enumerate(lines):
        if MARKER.match(line) and j not in used:
            problems.append(f"{doc}:{j + 1}: a docs-test marker must be the last line before a code block")
    for b in blocks:
        if b.mark and b.kind is None:
            problems.append(f"{b.where}: a docs-test marker on a block that is not a command")
    return blocks, problems


def doc_blocks(doc: str) -> list[Block]:
    return parse(doc, (ROOT / doc).read_text(encoding="utf-8"))[0]


def parts(doc: str) -> dict:
    """``{"quick": [...], "slow": [...]}``: the command blocks each test of ``doc`` runs."""
    out, slow = {"quick": [], "slow": []}, False
    for b in doc_blocks(doc):
        if b.kind is None:
            continue
        slow = slow or b.mark == "slow"
        if b.mark != "skip":
            out["slow" if slow else "quick"].append(b)
    return out


# --- the tiny-size overrides -------------------------------------------------------------

SITECUSTOMIZE = r'''
"""docs test (tests/test_docs_commands.py): the documented commands at a tiny size."""
import os
import sys

STEPS = 4


def _tool():
    argv = getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-m", "-c"):
        i += 1
    if i >= len(argv) or argv[i] == "-c":
        return ""
    if argv[i] == "-m":
        return argv[i + 1] if i + 1 < len(argv) else ""
    return os.path.basename(argv[i])


def _find(flag):
    for i, a in enumerate(sys.argv):
        if a == flag and i + 1 < len(sys.argv):
            return i + 1, False
        if a.startswith(flag + "="):
            return i, True
    return None, False


def _value(i, inline):
    return sys.argv[i].split("=", 1)[1] if inline else sys.argv[i]


def _put(i, inline, flag, value):
    sys.argv[i] = f"{flag}={value}" if inline else str(value)


def cap(flag, n, add=False):
    i, inline = _find(flag)
    if i is None:
        if add:
            sys.argv += [flag, str(n)]
        return
    try:
        v = int(_value(i, inline))
    except ValueError:
        return
    _put(i, inline, flag, min(v, n))


def first(flag, default=None):
    i, inline = _find(flag)
    if i is None:
        if default is not None:
            sys.argv += [flag, default]
        return
    _put(i, inline, flag, _value(i, inline).split(",")[0])


def _shrink(cfg):
    t, d, m, o = cfg.train, cfg.data, cfg.model, cfg.optim
    steps = STEPS if t.epochs else min(t.steps, STEPS)
    t.epochs, t.steps = 0, steps
    if t.stop_at:
        t.stop_at = min(t.stop_at, max(steps - 1, 1))
    t.log_every = min(t.log_every, 2)
    t.save_every = min(t.save_every, steps)
    if t.eval_every:
        t.eval_every = min(t.eval_every, steps)
    t.eval_limit = min(t.eval_limit, 8)
    t.max_new_tokens = min(t.max_new_tokens, 24)
    t.precision = "auto"
    if "offload" in str(t.ds_config):
        t.ds_config = "ds_configs/zero3.json"
    if o.warmup_steps > steps:
        o.warmup_steps = steps
    o.grad_accum = min(o.grad_accum, 2)
    if not m.init_from:
        m.preset = "tiny"
    d.seq_len = min(d.seq_len, 256)
    d.micro_batch_rows = min(d.micro_batch_rows, 4)
    if d.micro_batch_examples:
        d.micro_batch_examples = min(d.micro_batch_examples, 16)
    d.embedded_examples = min(d.embedded_examples, 300)
    if d.embedded_eval:
        d.embedded_eval = min(d.embedded_eval, 20)
    d.vocab_size = min(d.vocab_size, 1000)
    return cfg


class _ConfigHook:
    """Wraps megajepa.config.load when the module is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "megajepa.config":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run(module):
            exec_module(module)
            load = module.load

            def tiny_load(argv=None):
                return _shrink(load(argv))

            module.load = tiny_load

        spec.loader.exec_module = run
        return spec


sys.meta_path.insert(0, _ConfigHook())
_t = _tool()
if _t == "data_tools.generate":
    cap("--train", 300)
    cap("--test", 40)
elif _t in ("megajepa.eval", "collapse_check.py", "table1.py"):
    cap("--limit", 8, add=True)
    if _t != "collapse_check.py":
        cap("--max-new-tokens", 24, add=True)
elif _t == "megajepa.analyze":
    cap("--limit", 40, add=True)
if _t in ("sweep.py", "table1.py", "stp_experiments.py"):
    first("--seeds", "0")
if _t in ("sweep.py", "stp_experiments.py"):
    first("--lambdas", "1")
if _t == "sweep.py":
    first("--ks", "1")
if _t == "stp_experiments.py":
    cap("--steps", STEPS, add=True)
    cap("--jobs", 1, add=True)
'''

# Functions stand in for a few commands; each ends "|| return $?" so that a failure returns to
# the documented line, where the ERR trap names it (set -e would exit inside the function).
PRELUDE = r'''set -eo pipefail
_docs_py() {
  local exe=$1; shift
  case "${1:-} ${2:-}" in
    "-m pip"|"-m venv") echo "docs-test: not run: $exe $* (the test runs in the installed environment)"; return 0 ;;
    "-m pytest") echo "docs-test: '$exe -m pytest' would run the suite inside itself: mark the block" >&2; return 1 ;;
  esac
  command "$exe" "$@" || return $?
}
python() { _docs_py python "$@" || return $?; }
python3() { _docs_py python3 "$@" || return $?; }
pip() { echo "docs-test: not run: pip $*"; }
deepspeed() {  # the launcher's flags dropped: one process on the CPU
  while [ $# -gt 0 ] && [[ $1 != *.py ]]; do
    case $1 in --hostfile*|--num_nodes*|--master_addr*)
      echo "docs-test: a multi-node launch: mark the block" >&2; return 1 ;; esac
    shift
  done
  [ $# -gt 0 ] || { echo "docs-test: deepspeed without a script" >&2; return 1; }
  command python "$@" || return $?
}
tensorboard() {  # not served: the log folder must hold event files
  local dir=""
  while [ $# -gt 0 ]; do
    case $1 in --logdir) dir=$2; shift 2 ;; --logdir=*) dir=${1#--logdir=}; shift ;; *) shift ;; esac
  done
  if find "$dir" -name 'events.out.tfevents*' 2>/dev/null | grep -q .; then
    echo "docs-test: tensorboard not served; $dir holds event files"
  else
    echo "docs-test: tensorboard --logdir $dir: no event files there" >&2; return 1
  fi
}
command python -c 'import importlib.util as u, os
for m in ("megajepa", "data_tools"):
    assert os.path.realpath(u.find_spec(m).origin).startswith(os.path.realpath(os.getcwd())), m'
trap '_docs_rc=$?; echo "docs-test: exit $_docs_rc at session line $LINENO" >&2' ERR
'''


def rewrite(text: str, data_dir: str) -> str:
    """The documented text with the data variables pointed at the generated folder."""
    text = re.sub(r"(?<![\w$])(DATA|DATA_DIR)=(\"[^\"]*\"|'[^']*'|[^\s;]+)",
                  lambda m: f"{m.group(1)}={shlex.quote(data_dir)}", text)
    text = re.sub(r"(?<![\w$])NGPUS=\d+", "NGPUS=0", text)
    # a virtualenv the docs create is not entered: the test runs in its own environment
    return re.sub(r"(?:(?<=^)|(?<=&& )|(?<=; ))(?:\.|source) (\S*/bin/activate)\b",
                  r"echo 'docs-test: not run: activate \1'", text, flags=re.M)


def session(blocks: list[Block], data_dir: str, pydir: Path) -> tuple[str, list]:
    """The bash script of one run, and ``[(first session line, block)]`` to map errors back."""
    out, spans = [PRELUDE], []
    pydir.mkdir(parents=True, exist_ok=True)
    for b in blocks:
        out.append(f"echo 'docs-test: begin {b.where}'")
        if b.kind == "python":
            name = re.sub(r"\W", "_", b.where) + ".py"
            (pydir / name).write_text(b.text + "\n")
            body = f"python3 {shlex.quote(str(pydir / name))}"
        else:
            body = rewrite(b.text, data_dir)
        start = sum(s.count("\n") + 1 for s in out) + 1
        spans.append((start, b))
        out += [body, f"echo 'docs-test: end {b.where}'"]
    return "\n".join(out) + "\n", spans


def make_data(folder: Path) -> None:
    """``nlrx_synth_{train,test}.jsonl`` (the embedded generator) and a made-up
    ``rotten_tomatoes_{train,test}.jsonl`` (chat records, "Good"/"Bad")."""
    from data_tools import nlrx

    folder.mkdir(parents=True, exist_ok=True)

    def write(name, records):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    for split, n in (("train", 300), ("test", 40)):
        write(f"nlrx_synth_{split}.jsonl", [nlrx.chat_record(p["description"], p["regex"])
                                            for p in nlrx.generate_pairs(n, seed=0, split=split)])
        reviews = nlrx.generate_pairs(n, seed=1, split=split)
        write(f"rotten_tomatoes_{split}.jsonl", [
            {"messages": [{"role": "system", "content": "Determine whether the comment is positive or negative"},
                          {"role": "user", "content": p["description"]},
                          {"role": "assistant", "content": "Bad" if " not " in f" {p['description']} " else "Good"}]}
            for p in reviews])


def copy_repo(dest: Path) -> None:
    """The checkout's tracked and untracked, not ignored files (what a clone would hold)."""
    try:
        res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True)
        names = [n for n in res.stdout.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not any(part in (".git", "runs", "__pycache__") for part in p.parts)]
    for name in names:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@dataclasses.dataclass
class Outcome:
    code: int
    log: Path
    seconds: float
    spans: list


def tools(base: Path) -> tuple[Path, Path]:
    """``(bin, hook)``: ``python``/``python3`` as this interpreter, and the sitecustomize.

    The two are wrappers that exec this interpreter by its own path, not symlinks to it: an
    interpreter started through a symlink with no ``pyvenv.cfg`` beside it is the base
    Python, not the virtualenv's (whose packages the commands need)."""
    bin_dir, hook = base / "bin", base / "hook"
    bin_dir.mkdir(parents=True)
    hook.mkdir()
    for name in ("python", "python3"):
        wrapper = bin_dir / name
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        wrapper.chmod(0o755)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return bin_dir, hook


def session_env(bin_dir: Path, hook: Path, repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "COV_")) and k not in (
               "DATA", "DATA_DIR", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    # this environment's own bin/ next: its console scripts, not the machine's
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(PATH=path,
               PYTHONPATH=f"{hook}{os.pathsep}{repo}", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               DS_ACCELERATOR="cpu", MPLBACKEND="Agg", NGPUS="0", EVAL_LIMIT="8")
    return env


def run_session(blocks: list[Block], repo: Path, env: dict, work: Path, data_dir: str,
                started=lambda p: None) -> Outcome:
    """Run ``blocks`` in one bash session with ``repo`` as the working directory."""
    script, spans = session(blocks, data_dir, work / "py")
    (work / "session.sh").write_text(script)
    log = work / "session.log"
    t0 = time.time()
    with open(log, "w") as fh:
        p = subprocess.Popen(["bash", str(work / "session.sh")], cwd=repo, env=env, stdout=fh,
                             stderr=subprocess.STDOUT, start_new_session=True)
        started(p)
        try:
            code = p.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            code = p.wait()
            fh.write(f"\ndocs-test: killed after {TIMEOUT_S} s\n")
    return Outcome(code, log, time.time() - t0, spans)


class Runner:
    """Runs the selected (document, part) sessions, ``WORKERS`` at a time, each in a fresh copy."""

    def __init__(self, base: Path, keys: list):
        self.base, self.procs, self.lock = base, [], threading.Lock()
        self.data = base / "data"
        make_data(self.data)
        self.bin, self.hook = tools(base)
        self.pool = ThreadPoolExecutor(WORKERS)
        self.futures = {key: self.pool.submit(self.run, *key) for key in keys}

    def started(self, p) -> None:
        with self.lock:
            self.procs.append(p)

    def run(self, doc: str, part: str) -> Outcome:
        work = self.base / (re.sub(r"\W", "_", doc) + "-" + part)
        repo = work / "repo"
        copy_repo(repo)
        return run_session(parts(doc)[part], repo, session_env(self.bin, self.hook, repo), work,
                           str(self.data), self.started)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self.lock:
            for p in self.procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)


def check(outcome: Outcome, blocks: list[Block]) -> None:
    """Exit 0, every block reached its end, no traceback; else the failing command and the log."""
    text = outcome.log.read_text(errors="replace")
    ended = set(re.findall(r"^docs-test: end (\S+)$", text, re.M))
    missing = [b.where for b in blocks if b.where not in ended]
    failed = re.findall(r"^docs-test: exit (\d+) at session line (\d+)$", text, re.M)
    where = ""
    if failed:
        line = int(failed[-1][1])
        start, b = max(((s, b) for s, b in outcome.spans if s <= line), key=lambda x: x[0],
                       default=(0, None))
        if b is not None and b.kind == "python":
            where = f"{b.where}: the python block\n"
        elif b is not None:
            offset = line - start
            cmd = b.text.splitlines()[offset] if offset < len(b.text.splitlines()) else ""
            where = f"{b.doc}:{b.line + offset} (block {b.where}): {cmd.strip()}\n"
    tail = "\n".join(text.splitlines()[-80:])
    if outcome.code != 0 or missing:
        raise AssertionError(f"exit {outcome.code}; blocks not finished: {missing}\n{where}"
                             f"--- last lines of {outcome.log} ---\n{tail}")
    if "Traceback (most recent call last)" in text:
        raise AssertionError(f"a command printed a traceback but exited 0 (see {outcome.log}):\n{tail}")


def _params(part):
    return [pytest.param(doc, id=doc) for doc in DOCS if parts(doc)[part]]


@pytest.fixture(scope="module")
def runner(request, tmp_path_factory):
    """Starts every selected test's session at once (two at a time, the longest first)."""
    order = {"slow": 0, "quick": 1}
    keys = []
    for item in request.session.items:
        fn = getattr(item, "originalname", "")
        if fn in ("test_docs_commands_run", "test_docs_commands_run_slow"):
            part = "slow" if fn.endswith("slow") else "quick"
            keys.append((item.callspec.params["doc"], part))
    keys.sort(key=lambda k: (order[k[1]], -len(parts(k[0])[k[1]])))
    r = Runner(tmp_path_factory.mktemp("docs"), keys)
    yield r
    r.close()


# --- tests --------------------------------------------------------------------------------

def test_markers_are_well_formed_and_sit_before_blocks():
    problems = []
    for doc in DOCS:
        problems += parse(doc, (ROOT / doc).read_text(encoding="utf-8"))[1]
    assert not problems, "\n".join(problems)


def test_extraction_finds_the_documented_commands():
    """The parser sees what a reader sees (else the run tests would pass vacuously)."""
    readme = {b.line: b for b in doc_blocks("README.md")}
    kinds = [b.kind for b in readme.values()]
    assert kinds.count("python") >= 2 and kinds.count("shell") >= 3, kinds
    assert any("pretrain.py" in b.text and b.lang == "indented" and b.kind == "shell"
               for b in readme.values())
    assert any(b.kind is None and "gamma * CE" in b.text for b in readme.values())  # a formula
    run = {doc: parts(doc) for doc in DOCS}
    assert run["README.md"]["quick"] and run["docs/data.md"]["quick"]
    assert run["docs/results.md"]["slow"] and not run["docs/results.md"]["quick"]
    assert any("scripts/nlrx_pretrain.sh" in b.text for b in run["docs/training.md"]["slow"])
    skipped = [b for doc in DOCS for b in doc_blocks(doc) if b.mark == "skip"]
    assert skipped and all(b.reason for b in skipped)


def test_parser_on_a_made_up_document():
    doc = "\n".join([
        "Intro.", "", "    python3 pretrain.py --steps 2", "", "Formula:", "", "    L = a + b", "",
        "```yaml", "train: {steps: 2}", "```", "",
        "<!-- docs-test: skip — needs a GPU -->", "```bash", "deepspeed --num_gpus 8 x.py", "```",
        "```", "# a hostfile", "node1 slots=8", "```",
        "```", "error: bad.jsonl:3: malformed JSON", "```",
        "<!-- docs-test: slow: the experiment -->", "```bash", "python scripts/sweep.py --out r", "```",
        "```python", "print(1)", "```",
        "<!-- docs-test: skip -->", "```sh", "ls", "```",
        "<!-- docs-test: skip — dangling -->", "", "text"])
    blocks, problems = parse("x.md", doc)
    got = [(b.line, b.kind, b.mark, b.reason) for b in blocks]
    assert got == [(3, "shell", "", ""), (7, None, "", ""), (10, None, "", ""),
                   (15, "shell", "skip", "needs a GPU"), (18, None, "", ""), (22, None, "", ""),
                   (26, "shell", "slow", "the experiment"), (29, "python", "", ""),
                   (33, "shell", "skip", "")]
    assert problems == ["x.md:31: a docs-test skip marker needs a reason",
                        "x.md:35: a docs-test marker must be the last line before a code block"]


def test_rewrite_points_the_data_variables_at_the_generated_folder():
    text = ("export OMP_NUM_THREADS=1 DATA=path/to/nlrx_synth\n"
            "DATA_DIR=path/to/datasets NGPUS=8 scripts/x.sh --size tiny\n"
            "python a.py --data $DATA/x.jsonl MY_DATA=keep\n")
    assert rewrite(text, "/g d") == (
        "export OMP_NUM_THREADS=1 DATA='/g d'\n"
        "DATA_DIR='/g d' NGPUS=0 scripts/x.sh --size tiny\n"
        "python a.py --data $DATA/x.jsonl MY_DATA=keep\n")


def test_the_size_overrides_reach_the_config_and_the_tools(tmp_path):
    """The sitecustomize hook: pretrain.py's config shrinks after validation (an epoch budget
    included), and a driver's grids keep their first value."""
    bin_dir, hook = tools(tmp_path)
    env = session_env(bin_dir, hook, ROOT)
    code = ("import json; from megajepa.config import load; "
            "c = load(['--config', 'configs/nlrx_table1_paper.yaml', '--data.embedded_examples', '6000']); "
            "print(json.dumps([c.train.steps, c.train.epochs, c.model.preset, c.train.precision, c.data.seq_len, "
            "c.data.micro_batch_examples, c.train.eval_limit, c.train.max_new_tokens, c.data.embedded_examples]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [4, 0, "tiny", "auto", 256, 16, 8, 24, 300]
    (tmp_path / "sweep.py").write_text("import json, sys; print(json.dumps(sys.argv[1:]))")
    out = subprocess.run([sys.executable, str(tmp_path / "sweep.py"), "--ks", "2,4", "--seeds=3,1",
                          "--out", "r"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == ["--ks", "2", "--seeds=3", "--out", "r", "--lambdas", "1"]


@pytest.mark.parametrize("text,lang,named", [
    ("true\npython3 -c 'import sys; sys.exit(3)' \\\n    --flag\necho never", "bash",
     "exit 3; blocks not finished: ['x.md:20']\nx.md:21 (block x.md:20): python3 -c"),
    ("true\ndeepspeed --num_gpus 8 absent.py --k 1", "bash",
     "x.md:21 (block x.md:20): deepspeed --num_gpus 8 absent.py"),
    ("x = 1\nraise SystemExit(4)", "python", "exit 4; blocks not finished: ['x.md:20']\nx.md:20: the python block"),
    ("echo left early\nexit 0\necho never", "bash", "exit 0; blocks not finished: ['x.md:20']"),
    ("python3 -c 'exec(\"try:\\n 1/0\\nexcept Exception:\\n import traceback; traceback.print_exc()\")'",
     "bash", "printed a traceback but exited 0"),
])
def test_the_check_fails_naming_the_documented_line(tmp_path, text, lang, named):
    """A failing command (also one run through a stand-in such as deepspeed), a python block, a
    block that stops early and a swallowed traceback fail the check, naming the document line."""
    bin_dir, hook = tools(tmp_path)
    env = session_env(bin_dir, hook, ROOT)
    blocks = [Block("x.md", 10, "bash", "echo first"), Block("x.md", 20, lang, text)]
    fine = [blocks[0], Block("x.md", 30, "bash", "true && echo fine")]
    (tmp_path / "ok").mkdir()
    check(run_session(fine, ROOT, env, tmp_path / "ok", str(tmp_path)), fine)
    (tmp_path / "bad").mkdir()
    with pytest.raises(AssertionError, match=re.escape(named)):
        check(run_session(blocks, ROOT, env, tmp_path / "bad", str(tmp_path)), blocks)


@pytest.mark.parametrize("doc", _params("quick"))
def test_docs_commands_run(runner, doc):
    check(runner.futures[(doc, "quick")].result(), parts(doc)["quick"])


@pytest.mark.slow
@pytest.mark.parametrize("doc", _params("slow"))
def test_docs_commands_run_slow(runner, doc):
    check(runner.futures[(doc, "slow")].result(), parts(doc)["slow"])
