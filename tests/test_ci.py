"""CI runs README's test command, exactly, in a fresh virtualenv, against the pinned versions."""
import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ci(*args):
    return subprocess.run(["bash", str(ROOT / ".ci/run"), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def readme_test_command():
    text = (ROOT / "README.md").read_text()
    lines = [ln[4:] for ln in text.splitlines() if ln.startswith("    ") and "-m pytest" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_readme_test_command_in_a_fresh_venv_with_the_pins():
    line = ci("--print-command")
    assert line == readme_test_command()
    assert line.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert "-c constraints.txt" in line


def test_latest_drops_the_pins_in_a_venv_of_its_own():
    line = ci("--latest", "--print-command")
    assert line == (readme_test_command().replace("-c constraints.txt ", "")
                    .replace(".venv", ".venv-latest"))


def _name(req):
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_constraints_pin_every_dependency_but_torch():
    pins = {}
    for ln in (ROOT / "constraints.txt").read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", ln.strip())
            assert m, f"constraints.txt: not a pin: {ln!r}"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    calls = [n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    kw = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords
          if k.arg in ("install_requires", "extras_require")}
    tested = kw["install_requires"] + kw["extras_require"]["dev"]   # what CI installs
    names = {_name(r) for r in tested} - {"torch"}
    missing = sorted(n for n in names if n not in pins)
    assert not missing, f"constraints.txt lacks pins for {missing}"
    assert "torch" not in pins   # README installs the CPU or CUDA build first
