"""The code passes the checks STYLE.md asks for: ruff everywhere, mypy --strict on the pure parts."""

import subprocess
import sys

from tests.farm import ROOT

STRICT = ["shared", "services/_dispatch.py", "services/pool.py", "services/_license_store.py"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", "services", "shared", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_passes_on_shared_and_pure_logic() -> None:
    done = run("mypy", "--strict", *STRICT)
    assert done.returncode == 0, done.stdout + done.stderr
